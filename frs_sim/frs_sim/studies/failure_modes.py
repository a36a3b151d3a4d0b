"""Where does the task cube end up? Base / FRS episodes on a split, final cube vs every mat.

``python -m frs_sim.studies.failure_modes --checkpoint build/generalist_home --split novel
--episodes-per-task 3 --methods base,frs`` re-runs the evaluation's episodes (same seeds as
``frs_sim.evaluate`` seed 0) and prints, per episode, the mat the task cube ends nearest to
(``on`` when its centre is within the success square) and whether that is the named mat or the
cube's home mat (``frs_sim.tasks.HOME_PAIRS``). Exploration aid for issue 15 ("home mats").
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from frs_sim.env import MAT_SUCCESS_HALF, FrankaTabletopEnv
from frs_sim.evaluate.rollout import EvalConfig, Setting, episode_seed, run_episode
from frs_sim.evaluate.workers import LookupEmbedding, embed_texts_subprocess, split_instructions
from frs_sim.reasoner import ScriptedReasoner
from frs_sim.tasks import HOME_PAIRS, get_split
from frs_steering.checkpoint import load_policy


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON line per episode, then counts per (method, verb, success, where, motion)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="novel")
    parser.add_argument("--episodes-per-task", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="base")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    home = dict(HOME_PAIRS)
    embed = LookupEmbedding(embed_texts_subprocess(split_instructions(args.split)))
    policy = load_policy(args.checkpoint)
    config = EvalConfig()
    env = FrankaTabletopEnv(tasks=args.split, config=config.env, embed_fn=embed)
    rows, counts = [], Counter()
    for method in args.methods.split(","):
        setting = Setting(method, num_steps=10, solver="euler", split=args.split)
        for ti, task in enumerate(get_split(args.split)):
            for e in range(args.episodes_per_task):
                seed = episode_seed(args.seed, ti, e)
                reasoner = ScriptedReasoner(config.reasoner, seed=seed)
                env.reset(seed=seed, options={"task": task})  # run_episode resets identically
                starts = env.object_positions()
                start = starts[task.obj]
                home_start = env.target_positions().get(home.get(task.obj, ""), start)
                result = run_episode(env, policy, reasoner, task, setting, seed, config)
                finals = env.object_positions()
                cube = finals[task.obj]
                others = [
                    c
                    for c in finals
                    if c != task.obj and np.linalg.norm(finals[c][:2] - starts[c][:2]) > 0.02
                ]
                mats = env.target_positions()
                dist = {m: float(np.max(np.abs(cube[:2] - p[:2]))) for m, p in mats.items()}
                nearest = min(dist, key=dist.get)
                on = dist[nearest] <= MAT_SUCCESS_HALF
                kind = (
                    "named"
                    if nearest == task.target
                    else "home"
                    if nearest == home.get(task.obj)
                    else "other"
                )
                where = f"{'on' if on else 'near'}_{kind}" if dist[nearest] < 0.1 else "off"
                moved = float(np.linalg.norm(cube[:2] - start[:2])) > 0.02
                motion = "moved" if moved else "still"
                counts[(method, task.verb, result.success, where, motion)] += 1
                row = dict(
                    method=method,
                    task=task.name,
                    seed=seed,
                    success=result.success,
                    nearest=nearest,
                    where=where,
                    dist=round(dist[nearest], 3),
                    cube_z=round(float(cube[2]), 3),
                    steps=result.steps,
                    moved=round(float(np.linalg.norm(cube[:2] - start[:2])), 3),
                    home_dist=round(float(np.max(np.abs(cube[:2] - home_start[:2]))), 3),
                    held=bool(env.cube_in_fingers(task.object_index)),
                    other_cubes_moved=others,
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    env.close()
    print("\nmethod verb success where moved: count")
    for key, n in sorted(counts.items(), key=str):
        print(*key, n)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
