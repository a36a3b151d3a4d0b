"""Latency of steering methods with the built-in policy on CPU.

Measures the median wall time of one ``steer`` call (observation encode included) per method
and batch size, and the floor FRS cannot beat: one encode plus 2K velocity calls, timed in the
same run on the same inputs. Calls are interleaved across methods so drift hits all alike.

    PYTHONPATH=frs_steering .venv/bin/python frs_steering/bench/bench_steering.py [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from frs_steering.learning.noise_policy import NoisePolicy, NoisePolicyConfig
from frs_steering.learning.observation_input import (
    POLICY_EMBEDDING,
    REFERENCE_REVERSAL,
    REFERENCE_ROW,
)
from frs_steering.model import FlowMatchingPolicy, FlowPolicyConfig
from frs_steering.normalization import QuantileNormalizer
from frs_steering.policy import ActionSpec
from frs_steering.steer import steer

HORIZON, ACTION_DIM, REAL_DIMS, STATE_DIM, INSTRUCTION_DIM = 10, 8, 7, 16, 384
FRS_VS_BASE_TARGET = 2.2
FRS_VS_FLOOR_TARGET = 1.10

METHODS: dict[str, dict] = {
    "base": {"method": "base"},
    "frs": {"method": "frs"},
    "frs + base sample": {"method": "frs", "include_base_sample": True},
    "partial_noising 0.5": {"method": "partial_noising", "params": {"noise_level": 0.5}},
    "sample_rank N=8": {"method": "sample_rank", "params": {"num_samples": 8}},
    "direct": {"method": "direct"},
}


def build_policy(num_steps: int, seed: int = 0) -> FlowMatchingPolicy:
    """About 1M parameters; zero-initialised output layers get small random weights so the
    velocity is non-trivial (the cost is the same either way)."""
    spec = ActionSpec(
        horizon=HORIZON,
        dim=ACTION_DIM,
        real_dims=tuple(range(REAL_DIMS)),
        num_steps=num_steps,
        normalizer=QuantileNormalizer(q01=(-1.0,) * REAL_DIMS, q99=(1.0,) * REAL_DIMS),
    )
    config = FlowPolicyConfig(
        action_spec=spec, state_dim=STATE_DIM, instruction_dim=INSTRUCTION_DIM
    )
    policy = FlowMatchingPolicy(config, seed=seed).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (policy.observation_film, policy.time_film, policy.action_out):
            layer.weight.copy_(0.02 * torch.randn(layer.weight.shape, generator=generator))
    return policy


#: The learned reversal that also reads the reference's one-step reversal (the DSBC study's).
ONE_STEP = "learned_reversal + one-step input (384 x 3)"


def inputs(batch: int, seed: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    observation = {
        "state": torch.randn(batch, STATE_DIM, generator=generator),
        "instruction": torch.randn(batch, INSTRUCTION_DIM, generator=generator),
    }
    direction = torch.randn(batch, 1, REAL_DIMS, generator=generator)
    return observation, direction.expand(batch, HORIZON, REAL_DIMS).contiguous()


def learned_reversal(
    policy: FlowMatchingPolicy, hidden: int = 384, depth: int = 3, *, one_step: bool = False
) -> NoisePolicy:
    """A learned reversal of the DSBC study's size for ``policy`` (untrained: the cost is the
    same), predicting the translation and gripper dims; ``one_step``: reading the reference's
    one-step reversal too (one more velocity call)."""
    dims = {
        "state": STATE_DIM,
        POLICY_EMBEDDING: policy.config.width,
        REFERENCE_ROW: 2 * ACTION_DIM,
    }
    if one_step:
        dims[REFERENCE_REVERSAL] = HORIZON * ACTION_DIM
    config = NoisePolicyConfig(
        dims,
        HORIZON,
        ACTION_DIM,
        target="full",
        hidden=hidden,
        depth=depth,
        noise_dims=(0, 1, 2, 6),
    )
    return NoisePolicy(config, seed=0).eval()


def floor_call(policy: FlowMatchingPolicy, observation, velocity_calls: int) -> Callable[[], None]:
    """Encode once, then ``velocity_calls`` velocity evaluations and nothing else."""
    batch = observation["state"].shape[0]
    x = torch.randn(batch, HORIZON, ACTION_DIM)
    t = torch.full((batch,), 0.5)

    def run() -> None:
        with torch.inference_mode():
            cache = policy.encode(observation)
            for _ in range(velocity_calls):
                policy.velocity(x, t, cache)

    return run


def measure(calls: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per call, round-robin over ``calls``."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(warmup + repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                samples[name].append(elapsed)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    policy = build_policy(args.num_steps)
    k = args.num_steps
    reversals = {
        "learned_reversal (384 x 3)": learned_reversal(policy),
        ONE_STEP: learned_reversal(policy, one_step=True),
    }
    results: dict[int, dict[str, float]] = {}
    for batch in args.batch_sizes:
        observation, reference = inputs(batch)
        calls: dict[str, Callable[[], object]] = {
            name: functools.partial(
                steer,
                policy,
                reference,
                observation=observation,
                **{"include_base_sample": False, **options},
            )
            for name, options in METHODS.items()
        }
        for name, reversal in reversals.items():
            calls[name] = functools.partial(
                steer,
                policy,
                reference,
                observation=observation,
                method="learned_reversal",
                params={"reversal": reversal},
                include_base_sample=False,
            )
        calls["floor: encode + K velocity"] = floor_call(policy, observation, k)
        calls["floor: encode + 2K velocity"] = floor_call(policy, observation, 2 * k)
        results[batch] = measure(calls, args.repeats, args.warmup)

    print(
        f"built-in policy: {policy.num_parameters():,} parameters, chunk {HORIZON}x{ACTION_DIM}, "
        f"K={k} Euler; torch {torch.__version__}, {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()}; median of {args.repeats} calls\n"
    )
    header = " | ".join(f"B={b} (ms)" for b in args.batch_sizes)
    print(f"| method | {header} |")
    print("| --- |" + " --- |" * len(args.batch_sizes))
    for name in results[args.batch_sizes[0]]:
        cells = " | ".join(f"{results[b][name] * 1e3:.2f}" for b in args.batch_sizes)
        print(f"| {name} | {cells} |")

    summary: dict[str, object] = {}
    if 1 in results:
        ratio = results[1]["frs"] / results[1]["base"]
        verdict = "ok" if ratio <= FRS_VS_BASE_TARGET else "MISSED"
        print(f"\nFRS / base at B=1: {ratio:.2f} (target <= {FRS_VS_BASE_TARGET}) {verdict}")
        summary["frs_over_base_b1"] = ratio
    for name, key in (
        ("learned_reversal (384 x 3)", "learned_reversal_over_frs"),
        (ONE_STEP, "learned_reversal_one_step_over_frs"),
    ):
        learned = {b: results[b][name] / results[b]["frs"] for b in results}
        listing = ", ".join(f"B={b} {r:.2f}" for b, r in learned.items())
        print(f"{name} / FRS: {listing}")
        summary[key] = learned
    floors = {b: results[b]["frs"] / results[b]["floor: encode + 2K velocity"] for b in results}
    worst = max(floors.values())
    verdict = "ok" if worst <= FRS_VS_FLOOR_TARGET else "MISSED"
    listing = ", ".join(f"B={b} {r:.3f}" for b, r in floors.items())
    print(
        f"FRS / floor (encode + 2K velocity): {listing} (target <= {FRS_VS_FLOOR_TARGET}) {verdict}"
    )
    summary["frs_over_floor"] = floors

    if args.json:
        document = {
            "parameters": policy.num_parameters(),
            "threads": args.threads,
            "num_steps": k,
            "median_seconds": {str(b): r for b, r in results.items()},
            "summary": {
                key: ({str(b): v for b, v in value.items()} if isinstance(value, dict) else value)
                for key, value in summary.items()
            },
        }
        with open(args.json, "w") as handle:
            json.dump(document, handle, indent=2)


if __name__ == "__main__":
    main()
