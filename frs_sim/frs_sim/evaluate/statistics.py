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
