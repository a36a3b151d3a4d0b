"""Adapters that make third-party flow-matching policies speak :class:`FlowPolicy`, and the one
function that turns a ``checkpoint`` parameter into a policy.

Each adapter imports its framework lazily, so importing this package costs nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: ``checkpoint`` values starting with this name a LeRobot pi0 / pi0.5 checkpoint directory.
LEROBOT_PREFIX = "lerobot:"


def load_checkpoint_parameter(value: str, device: str | torch.device = "cpu") -> tuple[str, object]:
    """``(directory, policy)`` of a ``checkpoint`` parameter: ``lerobot:<dir>`` loads a LeRobot
    pi0 / pi0.5 checkpoint (local directory, tokenizer in ``<dir>/tokenizer``); anything else is
    a built-in checkpoint ("" = the shipped generalist, a shipped name, or a directory).
    Raises ValueError (CheckpointError for built-in ones) naming the problem."""
    from frs_steering.checkpoint import CheckpointError, load_policy
    from frs_steering.package_data import resolve_checkpoint

    if value.startswith(LEROBOT_PREFIX):
        from frs_steering.policies.lerobot_compat import LeRobotUnavailable
        from frs_steering.policies.lerobot_pi import load_lerobot_pi

        directory = value[len(LEROBOT_PREFIX) :]
        try:
            return directory, load_lerobot_pi(directory, device=device)
        except LeRobotUnavailable as error:
            raise ValueError(str(error)) from None
    directory = str(resolve_checkpoint(value))
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    return directory, load_policy(directory, device=device)
