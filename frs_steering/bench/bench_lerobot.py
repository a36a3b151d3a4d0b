"""FRS latency on LeRobot's pi0 / pi0.5 model code vs LeRobot's own ``sample_actions``.

Same tiny random model (openpi ``dummy`` Gemma sizes, 1-layer SigLIP, 64x64 images, 2 cameras,
chunk 50 x 32, K = 10), same preprocessed observation, same thread count. One ``steer`` call
(FRS, observation encode included, no extra unsteered sample) against one ``sample_actions``
call: the floor is one prefix + 2K expert steps against one prefix + K. Calls are interleaved
so drift hits both alike; prefix forwards and expert steps are counted per FRS call. Runs in
the LeRobot side env (scripts/setup_lerobot.sh):

    PYTHONPATH=frs_steering:frs_control .venv-lerobot/bin/frs-python \
        frs_steering/bench/bench_lerobot.py [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from frs_steering.policies.lerobot_pi import load_lerobot_pi
from frs_steering.policies.lerobot_tiny import (
    TINY_CAMERAS,
    tiny_architecture,
    write_tiny_checkpoint,
)
from frs_steering.steer import steer

FRS_VS_SAMPLE_TARGET = 2.1


def frame(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out: dict = {
        f"observation.images.{c}": torch.rand(3, 64, 64, generator=gen) for c in TINY_CAMERAS
    }
    out["observation.state"] = torch.randn(8, generator=gen)
    out["task"] = "pick up the red cube"
    return out


def measure(kind: str, repeats: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        path = write_tiny_checkpoint(Path(directory) / kind, kind)
        with tiny_architecture():
            policy = load_lerobot_pi(path)
    obs = policy.preprocess(frame())
    reference = policy.spec.normalizer.unnormalize(torch.zeros(50, 8)) + 0.2
    noise = torch.randn(1, *policy.spec.chunk_shape, generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {"sample_actions": [], "frs": []}
    prefixes, steps = [], []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        policy.sample_actions(obs, noise.clone())
        sample_s = time.perf_counter() - start
        prefix, calls = policy.prefix_forwards, policy.velocity_calls
        start = time.perf_counter()
        steer(policy, reference, observation=obs, include_base_sample=False)
        frs_s = time.perf_counter() - start
        if i >= warmup:
            times["sample_actions"].append(sample_s)
            times["frs"].append(frs_s)
            prefixes.append(policy.prefix_forwards - prefix)
            steps.append(policy.velocity_calls - calls)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "kind": kind,
        "sample_actions_ms": 1000 * median["sample_actions"],
        "frs_ms": 1000 * median["frs"],
        "ratio": median["frs"] / median["sample_actions"],
        "prefix_forwards_per_frs": sorted(set(prefixes)),
        "expert_steps_per_frs": sorted(set(steps)),
        "num_steps": policy.spec.num_steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", default=["pi0", "pi05"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(kind, args.repeats, args.warmup) for kind in args.kinds]
    machine = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {machine}")
    print(
        f"{'model':6} {'sample_actions ms':>18} {'FRS ms':>8} {'ratio':>6}  prefix/FRS  steps/FRS"
    )
    for row in rows:
        print(
            f"{row['kind']:6} {row['sample_actions_ms']:18.1f} {row['frs_ms']:8.1f} "
            f"{row['ratio']:6.2f}  {row['prefix_forwards_per_frs']!s:10}  "
            f"{row['expert_steps_per_frs']} (K = {row['num_steps']})"
        )
    worst = max(row["ratio"] for row in rows)
    verdict = "meets" if worst <= FRS_VS_SAMPLE_TARGET else "MISSES"
    target = FRS_VS_SAMPLE_TARGET
    print(f"FRS / sample_actions worst ratio {worst:.2f}: {verdict} the <= {target}x target")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
