"""Success statistics of a comparison: Wilson intervals, per-setting summaries, the table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from frs_sim.evaluate.rollout import EpisodeResult, Setting
from frs_sim.tasks import get_split


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval for a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p from the discordant pairs (episodes only one run solved)."""
    n, k = only_first + only_second, min(only_first, only_second)
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n)


def paired_comparison(
    first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Episode-by-episode comparison of two runs on the same (task, seed) episodes.

    Each episode is a mapping with ``task``, ``seed`` and ``success`` (the ``episodes`` of a
    ``frs_sim.evaluate`` or ``sim_demo`` results.json). Raises ``ValueError`` unless both runs
    hold exactly the same episodes.
    """
    a = {(str(e["task"]), int(e["seed"])): bool(e["success"]) for e in first}
    b = {(str(e["task"]), int(e["seed"])): bool(e["success"]) for e in second}
    if len(a) != len(first) or len(b) != len(second):
        raise ValueError("a run lists an episode (task, seed) twice")
    if a.keys() != b.keys():
        raise ValueError(
            f"the runs hold different episodes: {len(a.keys() - b.keys())} only in the first, "
            f"{len(b.keys() - a.keys())} only in the second"
        )
    only_first = sum(a[k] and not b[k] for k in a)
    only_second = sum(b[k] and not a[k] for k in a)
    return {
        "episodes": len(a),
        "first_successes": sum(a.values()),
        "second_successes": sum(b.values()),
        "only_first": only_first,
        "only_second": only_second,
        "mcnemar_p": mcnemar_exact_p(only_first, only_second),
    }


def summarize(settings: Sequence[Setting], results: Sequence[EpisodeResult]) -> list[dict]:
    rows = []
    for setting in settings:
        mine = [r for r in results if r.setting == setting.label and _split_of(r, setting)]
        n = len(mine)
        wins = sum(r.success for r in mine)
        low, high = wilson_interval(wins, n)
        per_task: dict[str, list[int]] = {}
        for r in mine:
            per_task.setdefault(r.task, [0, 0])
            per_task[r.task][0] += r.success
            per_task[r.task][1] += 1
        chunks = sum(r.chunks for r in mine)
        rows.append(
            {
                **setting.to_dict(),
                "episodes": n,
                "successes": wins,
                "success_rate": wins / n if n else 0.0,
                "ci95": [low, high],
                "mean_steps": float(np.mean([r.steps for r in mine])) if mine else 0.0,
                "deferred_chunk_fraction": (
                    sum(r.deferred_chunks for r in mine) / chunks if chunks else 0.0
                ),
                "per_task": {k: {"successes": v[0], "episodes": v[1]} for k, v in per_task.items()},
            }
        )
    return rows


def _split_of(result: EpisodeResult, setting: Setting) -> bool:
    return any(t.name == result.task for t in get_split(setting.split))


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| split | method | setting | success | 95% CI | episodes | mean steps | deferred |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        low, high = row["ci95"]
        lines.append(
            f"| {row['split']} | {row['method']} | {row['label']} | "
            f"{100 * row['success_rate']:.1f}% | [{100 * low:.1f}, {100 * high:.1f}] | "
            f"{row['episodes']} | {row['mean_steps']:.1f} | "
            f"{100 * row['deferred_chunk_fraction']:.0f}% |"
        )
    return "\n".join(lines) + "\n"
