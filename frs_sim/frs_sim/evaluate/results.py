"""Run a comparison and write its results folder.

``results.json`` (config, one row per setting, every episode), ``results.md`` (success with
Wilson 95% intervals), ``success.png`` and ``episode.png`` (end-effector paths of one episode:
executed FRS path with the reference direction and an unsteered sample per chunk, and the
unsteered base policy's own rollout).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from frs_sim.env import FrankaTabletopEnv
from frs_sim.evaluate.plots import plot_episode, plot_success
from frs_sim.evaluate.rollout import EvalConfig, Setting, make_jobs, run_episode
from frs_sim.evaluate.statistics import markdown_table, summarize
from frs_sim.evaluate.workers import (
    LookupEmbedding,
    embed_texts_subprocess,
    run_jobs,
    split_instructions,
)
from frs_sim.reasoner import ScriptedReasoner
from frs_sim.tasks import get_split, own_tasks_split
from frs_steering.checkpoint import load_policy
from frs_steering.instructions import EMBEDDING_DIM


def results_json(document: dict) -> str:
    """``document`` as indented JSON with one line per episode (small, diffable files)."""
    head = {k: v for k, v in document.items() if k != "episodes"}
    text = json.dumps(head, indent=2)
    episodes = ",\n    ".join(json.dumps(e) for e in document.get("episodes", []))
    return text[:-2] + f',\n  "episodes": [\n    {episodes}\n  ]\n}}\n'


def trained_split(checkpoint: str | Path | None) -> str:
    """The split a generalist checkpoint was trained on (its ``training.json`` recipe), or
    ``pretrain`` where the checkpoint does not say (a policy object, a hand-made checkpoint)."""
    if checkpoint is None:
        return "pretrain"
    summary = Path(checkpoint) / "training.json"
    try:
        split = json.loads(summary.read_text())["recipe"]["split"]
    except FileNotFoundError:
        return "pretrain"
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{summary} does not name the training split: {error}") from error
    if not isinstance(split, str):
        raise ValueError(f"{summary} names training split {split!r}, not a split name")
    return split


def evaluate(
    out: Path,
    *,
    checkpoint: str | Path | None = None,
    policy=None,
    settings: Sequence[Setting],
    episodes_per_task: int = 5,
    seeds: Sequence[int] = (0,),
    config: EvalConfig | None = None,
    sanity_episodes_per_task: int = 2,
    sanity_split: str | None = None,
    embeddings: Mapping[str, np.ndarray] | None = None,
    workers: int = 1,
    progress: bool = True,
    plots: bool = True,
) -> dict:
    """Run the comparison and write results.json / results.md / success.png / episode.png.

    The sanity row runs the base policy on ``sanity_split`` (default: the checkpoint's own
    tasks, :func:`trained_split`)."""
    start = time.perf_counter()
    config = EvalConfig() if config is None else config
    if (checkpoint is None) == (policy is None):
        raise ValueError("give exactly one of checkpoint or policy")
    if sanity_episodes_per_task > 0:
        if sanity_split is None:
            sanity_split = own_tasks_split(trained_split(checkpoint))
        get_split(sanity_split)  # an unknown name is refused before the folder is made
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if checkpoint is not None and workers <= 1:
        policy, checkpoint = load_policy(checkpoint), None
    all_settings = list(settings)
    if sanity_episodes_per_task > 0:
        all_settings.append(Setting("base", split=sanity_split))
    splits = sorted({s.split for s in all_settings})
    texts = [t for s in splits for t in split_instructions(s)]
    if config.withhold_instruction:
        embeddings = {t: np.zeros(EMBEDDING_DIM, dtype=np.float32) for t in texts}
    elif embeddings is None:
        embeddings = embed_texts_subprocess(texts)
    embed_fn = LookupEmbedding(embeddings)
    jobs = make_jobs(settings, episodes_per_task, seeds, config.tasks)
    if sanity_episodes_per_task > 0:
        jobs += make_jobs(all_settings[-1:], sanity_episodes_per_task, seeds[:1])
    if not jobs:
        raise ValueError("no episodes to run (check --tasks against the split)")
    results = run_jobs(
        jobs,
        checkpoint=None if checkpoint is None else str(checkpoint),
        policy=policy,
        embed_fn=embed_fn,
        config=config,
        workers=workers,
        progress=progress,
    )
    rows = summarize(all_settings, results)
    document = {
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "config": {
            "execute_rows": config.execute_rows,
            "reasoner_every": config.reasoner_every,
            "max_translation": config.max_translation,
            "reasoner": asdict(config.reasoner),
            "episodes_per_task": episodes_per_task,
            "seeds": list(seeds),
            "sanity_episodes_per_task": sanity_episodes_per_task,
            "sanity_split": sanity_split,
            "max_episode_steps": config.env.max_episode_steps,
            "tasks": None if config.tasks is None else list(config.tasks),
            "withhold_instruction": config.withhold_instruction,
        },
        "rows": rows,
        "episodes": [
            {k: v for k, v in asdict(r).items() if k not in ("record", "objects", "samples")}
            | {"seconds": round(r.seconds, 3)}
            for r in results
        ],
        "seconds": None,
    }
    table = markdown_table(rows)
    if plots:
        plot_success(rows, out / "success.png")
        _episode_picture(
            out / "episode.png", settings, results, policy, checkpoint, embed_fn, config
        )
    document["seconds"] = round(time.perf_counter() - start, 1)
    (out / "results.json").write_text(results_json(document))
    header = (
        f"Closed-loop success, {episodes_per_task} episodes per task x seeds {list(seeds)}; "
        f"execute_rows={config.execute_rows}, reasoner_every={config.reasoner_every}, "
        f"defer_radius={config.reasoner.defer_radius} m, "
        f"slow_radius={config.reasoner.slow_radius} m, quantize={config.reasoner.quantize}, "
        f"angular_noise={config.reasoner.angular_noise_deg} deg, "
        f"wrong_rate={config.reasoner.wrong_direction_rate}, "
        f"defer_at={','.join(config.reasoner.defer_at) or 'none'}, "
        f"command_release={config.reasoner.command_release}, "
        f"command_grasp={config.reasoner.command_grasp}, "
        f"state_gripper={config.reasoner.state_gripper}, "
        f"aim_error={config.reasoner.aim_error} m; {document['seconds']} s.\n\n"
    )
    (out / "results.md").write_text(header + table)
    return document


def _episode_picture(path, settings, results, policy, checkpoint, embed_fn, config) -> None:
    """Re-run (deterministically) one episode with recording: FRS vs the base policy."""
    frs = [s for s in settings if s.method == "frs"]
    if not frs:
        return
    steered_setting = frs[0]
    base_setting = Setting("base", split=steered_setting.split)
    wins = {(r.task, r.seed) for r in results if r.setting == steered_setting.label and r.success}
    base_wins = {(r.task, r.seed) for r in results if r.setting == "base" and r.success}
    candidates = [
        (r.task, r.seed) for r in results if r.setting == steered_setting.label
    ]  # in job order
    preferred = [c for c in candidates if c in wins and c not in base_wins] or candidates
    task_name, seed = preferred[0]
    task = next(t for t in get_split(steered_setting.split) if t.name == task_name)
    if policy is None:
        policy = load_policy(checkpoint)
    env = FrankaTabletopEnv(tasks=steered_setting.split, config=config.env, embed_fn=embed_fn)
    try:
        runs = [
            run_episode(
                env,
                policy,
                ScriptedReasoner(config.reasoner, seed=seed),
                task,
                s,
                seed,
                config,
                record=True,
            )
            for s in (steered_setting, base_setting)
        ]
    finally:
        env.close()
    plot_episode(runs[0], runs[1], path)
