"""What flushing subnormal floats saves the learners: one training, twice, side by side.

``python -m frs_sim.studies.subnormals --rollouts build/ship_dsbc/rollouts.safetensors --task
push_green_purple`` clones a reference policy (the DSRL study's per-task clone) on the task's
chunks with subnormals kept and flushed, in alternating order in one process, and prints the CPU
seconds of each, their ratio, and whether the two trainings ended with the same weights. Adam's
second moments of near-silent units underflow into subnormals, which x86 cores handle several
times slower; :func:`frs_steering.train.flushing_denormals` is what the learners use.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from frs_sim.evaluate.workers import LookupEmbedding, embed_texts_subprocess, split_instructions
from frs_sim.studies.dsrl import task_mask
from frs_sim.tasks import get_split
from frs_steering.learning.noise_data import NoiseDataset
from frs_steering.learning.reference_policy import ReferenceCloningConfig, train_reference_policy


def clone_once(dataset: NoiseDataset, steps: int, *, flush: bool) -> tuple[float, torch.Tensor]:
    """CPU seconds and final flat weights of one seeded reference cloning, with subnormals
    flushed (as the learners train) or kept (the CPU's default)."""
    config = ReferenceCloningConfig(steps=steps, max_seconds=math.inf, flush_subnormals=flush)
    net, history = train_reference_policy(dataset, config=config, progress=False)
    weights = torch.cat([p.detach().flatten() for p in net.parameters()])
    return float(history["cpu_seconds"]), weights


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=Path, required=True, help="a DSBC study's rollouts")
    parser.add_argument("--task", help="clone on this novel task's chunks only (default: all)")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=2, help="alternating pairs of runs")
    parser.add_argument("--out", type=Path, help="write results.json here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")
    if not torch.set_flush_denormal(False):
        raise SystemExit("this CPU cannot flush subnormals: nothing to compare")
    torch.set_num_threads(1)
    try:
        data = NoiseDataset.load(args.rollouts)
    except (OSError, ValueError) as error:  # NoiseDatasetError is a ValueError
        raise SystemExit(f"--rollouts {args.rollouts}: {error}") from None
    if data.proposals is None:
        raise SystemExit(f"{args.rollouts} holds no proposals to clone")
    if args.task:
        tasks = {t.name: t for t in get_split("novel")}
        if args.task not in tasks:
            raise SystemExit(f"unknown task {args.task!r}; novel has {sorted(tasks)}")
        embed_fn = LookupEmbedding(embed_texts_subprocess(split_instructions("novel")))
        data = data.select(task_mask(data, tasks[args.task], embed_fn))
    seconds: dict[str, list[float]] = {"kept": [], "flushed": []}
    weights: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    for repeat in range(args.repeats):
        order = ("kept", "flushed") if repeat % 2 == 0 else ("flushed", "kept")
        for mode in order:
            cpu, weights[mode] = clone_once(data, args.steps, flush=mode == "flushed")
            seconds[mode].append(cpu)
            print(
                f"run {repeat + 1}/{args.repeats}, subnormals {mode}: {cpu:.1f} s CPU", flush=True
            )
    kept, flushed = min(seconds["kept"]), min(seconds["flushed"])
    result = {
        "rollouts": str(args.rollouts),
        "task": args.task or "all",
        "chunks": len(data),
        "steps": args.steps,
        "cpu_seconds": seconds,
        "kept_over_flushed": kept / flushed,
        "same_weights": bool(torch.equal(weights["kept"], weights["flushed"])),
        "wall_seconds": time.perf_counter() - start,
    }
    print(
        f"{len(data)} chunks, {args.steps} steps: kept {kept:.1f} s, flushed {flushed:.1f} s CPU "
        f"(best of {args.repeats}): {result['kept_over_flushed']:.2f}x; "
        f"same weights: {result['same_weights']}"
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
