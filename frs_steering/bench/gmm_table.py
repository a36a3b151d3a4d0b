"""Print, as markdown, how FRS behaves on an exact Gaussian-mixture flow.

Coarse references are drawn around one mode of a 4-mode mixture of precise 5x2 chunks (off the
data support). For each step count K we report how often the FRS output keeps the reference's
mode, raises the data log-density, lands in distribution, and its distance to the reference;
then the baselines at K = 10. Run:

    PYTHONPATH=frs_steering .venv/bin/python frs_steering/bench/gmm_table.py
"""

from __future__ import annotations

import argparse

import torch

from frs_steering.analytic import coarse_references, example_mixture, steering_outcomes
from frs_steering.steer import steer

COLUMNS = ("same_mode", "density_rises", "on_support", "rms_to_reference")


def _row(label: str, nfe: int, outcome: dict[str, float]) -> str:
    cells = [
        f"{outcome[c]:.2f}" if c != "rms_to_reference" else f"{outcome[c]:.3f}" for c in COLUMNS
    ]
    return f"| {label} | {nfe} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.5, help="reference noise per element")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    policy = example_mixture(args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    references, modes = coarse_references(policy, args.references, args.spread, generator)
    print(
        f"{policy.num_modes}-mode mixture over {policy.spec.horizon}x{policy.spec.dim} chunks, "
        f"mode std 0.1; {args.references} references = mode mean + N(0, {args.spread}^2); "
        f"chance of same mode = {1 / policy.num_modes:.2f}\n"
    )
    headers = ("method", "velocity calls", "same mode", "log-density rises", "in distribution")
    print("| " + " | ".join((*headers, "RMS to reference")) + " |")
    print("| --- | --- | --- | --- | --- | --- |")

    def run(method: str, num_steps: int, **params) -> tuple[int, dict[str, float]]:
        result = steer(
            policy,
            references,
            observation={},
            method=method,
            params=params,
            num_steps=num_steps,
            generator=torch.Generator().manual_seed(args.seed + 2),
            include_base_sample=False,
        )
        return result.diagnostics.nfe, steering_outcomes(policy, references, modes, result.chunk)

    for num_steps in (1, 2, 3, 5, 10, 20, 50, 100):
        print(_row(f"FRS, K={num_steps}", *run("frs", num_steps)))
    print(_row("base sample, K=10", *run("base", 10)))
    print(_row("direct (reference)", *run("direct", 10)))
    for level in (0.3, 0.5, 0.8):
        print(
            _row(f"partial noising {level}, K=10", *run("partial_noising", 10, noise_level=level))
        )
    print(_row("sample-and-rank N=8 (8x batch), K=10", *run("sample_rank", 10, num_samples=8)))


if __name__ == "__main__":
    main()
