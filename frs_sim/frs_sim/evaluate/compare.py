"""Compare two runs of the same episodes, episode by episode: successes per verb, the episodes
only one run solved, and the exact McNemar p.

    python -m frs_sim.evaluate.compare frs_bringup/results/sim_demo/pure_simulation.json \\
        frs_bringup/results/sim_demo/results.json

Either file is a ``frs_sim.evaluate`` or ``frs_bringup.sim_demo`` results.json (its
``episodes``); ``--setting`` picks one setting of an evaluation that ran several (in both
files where the second is an evaluation with that setting too; a sim_demo run has one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from frs_sim.evaluate.statistics import paired_comparison


def load_episodes(path: Path, setting: str = "") -> list[dict[str, Any]]:
    """The episodes of a results.json, optionally of one setting; ValueError if unreadable."""
    try:
        data = json.loads(path.read_text())
        episodes = data["episodes"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a results.json with episodes ({err})") from None
    if not isinstance(episodes, list):
        raise ValueError(f"{path}: episodes is not a list")
    if setting:
        episodes = [e for e in episodes if e.get("setting") == setting]
        if not episodes:
            raise ValueError(f"{path}: no episode of setting {setting!r}")
    return episodes


def verb_counts(episodes: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """(successes, episodes) per verb, the task name's first word (place, push, ...)."""
    counts: dict[str, tuple[int, int]] = {}
    for episode in episodes:
        verb = str(episode["task"]).split("_")[0]
        wins, total = counts.get(verb, (0, 0))
        counts[verb] = (wins + bool(episode["success"]), total + 1)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--setting", default="", help="one setting of a multi-setting evaluation")
    args = parser.parse_args(argv)
    try:
        first = load_episodes(args.first, args.setting)
        second = load_episodes(args.second)
        if args.setting and any(e.get("setting") == args.setting for e in second):
            second = [e for e in second if e.get("setting") == args.setting]  # the same row
        result = paired_comparison(first, second)
    except (ValueError, KeyError) as err:
        print(f"compare: {err}", file=sys.stderr)
        return 2
    n = result["episodes"]
    for label, path, episodes in (("first", args.first, first), ("second", args.second, second)):
        verbs = ", ".join(f"{v} {w}/{t}" for v, (w, t) in sorted(verb_counts(episodes).items()))
        print(f"{label}: {result[label + '_successes']}/{n} ({verbs})  {path}")
    print(
        f"only first {result['only_first']}, only second {result['only_second']}, "
        f"exact McNemar p = {result['mcnemar_p']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
