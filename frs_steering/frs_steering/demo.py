"""The project's main job for now: steer the shipped generalist on held-out tasks.

``python -m frs_steering.demo`` loads the shipped checkpoint (``frs_steering/checkpoints/
generalist`` in the source tree, or ``share/frs_steering/checkpoints/generalist`` of an install),
runs ``--episodes-per-task`` (default 3) episodes of every task of the novel split with the base
policy and with FRS (Euler, the policy's K=10) guided by the scripted reasoner (same environment
seed for both), and prints success per episode and a summary. About 30 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

from frs_steering.package_data import shipped_checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: shipped one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes-per-task", type=int, default=3)
    parser.add_argument("--execute-rows", type=int, default=5)
    parser.add_argument("--defer-radius", type=float, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from frs_steering.checkpoint import load_policy
    from frs_steering.sim.env import FrankaTabletopEnv
    from frs_steering.sim.evaluate import (
        EvalConfig,
        Setting,
        _LookupEmbedding,
        embed_texts_subprocess,
        episode_seed,
        run_episode,
        split_instructions,
    )
    from frs_steering.sim.reasoner import ReasonerConfig, ScriptedReasoner
    from frs_steering.sim.tasks import get_split

    start = time.perf_counter()
    torch.set_num_threads(2)
    checkpoint = args.checkpoint or shipped_checkpoint()
    policy = load_policy(checkpoint)
    print(f"generalist: {checkpoint} ({policy.num_parameters():,} parameters)")
    reasoner_config = ReasonerConfig()
    if args.defer_radius is not None:
        reasoner_config = ReasonerConfig(defer_radius=args.defer_radius)
    config = EvalConfig(execute_rows=args.execute_rows, reasoner=reasoner_config)
    embed_fn = _LookupEmbedding(embed_texts_subprocess(split_instructions("novel")))
    env = FrankaTabletopEnv(tasks="novel", embed_fn=embed_fn)
    settings = (Setting("base"), Setting("frs"))
    totals = [0, 0]
    tasks = get_split("novel")
    print(f"{'task':<22} {'seed':>6}  {'base':>12}  {'FRS + reasoner':>16}")
    try:
        for index, episode in (
            (i, e) for i in range(len(tasks)) for e in range(args.episodes_per_task)
        ):
            task = tasks[index]
            seed = episode_seed(args.seed, index, episode)
            cells = []
            for column, setting in enumerate(settings):
                reasoner = ScriptedReasoner(config.reasoner, seed=seed)
                result = run_episode(env, policy, reasoner, task, setting, seed, config)
                totals[column] += result.success
                word = "success" if result.success else "fail"
                cells.append(f"{word} ({result.steps:>2} st)")
            print(f"{task.name:<22} {seed:>6}  {cells[0]:>12}  {cells[1]:>16}")
    finally:
        env.close()
    n = len(tasks) * args.episodes_per_task
    print(
        f"summary: base {totals[0]}/{n}, FRS + scripted reasoner {totals[1]}/{n} "
        f"on the novel split ({time.perf_counter() - start:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
