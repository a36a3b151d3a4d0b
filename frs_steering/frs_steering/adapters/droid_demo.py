"""A small flow policy in the droid layout, trained in seconds on synthetic data.

``python -m frs_steering.adapters.droid_demo --out frs_steering/checkpoints/droid_demo`` writes
the shipped ``droid_demo`` checkpoint, which the simulated droid stack (``sim_demo --stack
droid``) steers: it shows the droid observation path working (three cameras as
``sensor_msgs/Image`` topics, joints, gripper, joint-velocity actions at 15 Hz) without a real
DROID checkpoint. It has learned no task: the 7 joint velocities follow the colour of the first
camera (``0.4 * (mean red - mean blue)`` for every joint) and the gripper follows the state's
gripper opening, so images really condition it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from frs_steering.adapters.droid import DROID_CAMERAS


def demo_policy(
    cameras: tuple[str, ...] = DROID_CAMERAS,
    *,
    image_size: int = 32,
    horizon: int = 15,
    train_steps: int = 150,
    seed: int = 0,
) -> Any:
    """The demo policy (see the module docstring); deterministic for a seed."""
    from frs_steering.model import FlowMatchingPolicy, FlowPolicyConfig
    from frs_steering.normalization import fit_normalizer
    from frs_steering.policy import ActionSpec, TimeConvention
    from frs_steering.train import train_flow_policy

    generator = torch.Generator().manual_seed(seed)
    count = 512
    colours = torch.rand(count, len(cameras), 3, 1, 1, generator=generator)
    texture = 0.1 * torch.rand(count, len(cameras), 3, image_size, image_size, generator=generator)
    images = (colours + texture).clamp(0.0, 1.0)
    state = torch.rand(count, 8, generator=generator) * 2.0 - 1.0
    state[:, 7] = state[:, 7].abs()
    speed = 0.4 * (colours[:, 0, 0, 0, 0] - colours[:, 0, 2, 0, 0])
    actions = torch.zeros(count, horizon, 8)
    actions[:, :, :7] = speed[:, None, None]
    actions[:, :, 7] = 1.0 - state[:, 7:8]
    actions += 0.01 * torch.randn(actions.shape, generator=generator)
    spec = ActionSpec(
        horizon=horizon,
        dim=8,
        convention=TimeConvention.NOISE_AT_ONE,
        num_steps=10,
        normalizer=fit_normalizer(actions.reshape(-1, 8), kind="quantile"),
    )
    config = FlowPolicyConfig(
        action_spec=spec,
        state_dim=8,
        width=64,
        depth=2,
        image_keys=tuple(cameras),
        image_size=image_size,
    )
    policy = FlowMatchingPolicy(config, seed=seed)
    observations = {"state": state}
    observations.update({f"image.{c}": images[:, i] for i, c in enumerate(cameras)})
    train_flow_policy(
        policy, observations, actions, steps=train_steps, batch_size=64, seed=seed, progress=False
    )
    return policy.eval()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=300)
    args = parser.parse_args(argv)
    from frs_steering.checkpoint import save_policy

    torch.set_num_threads(1)
    policy = demo_policy(train_steps=args.train_steps, seed=args.seed)
    save_policy(policy, args.out)
    print(f"droid demo policy ({policy.num_parameters()} parameters) written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
