"""Coarse Cartesian proposals turned into reference chunks in a policy's own action space.

A reasoner says "move this way, more or less, and do this with the gripper". Steering needs a
full chunk ``[horizon, dim]`` in the policy's normalized, padded space plus a mask of the elements
the reasoner actually commands; everything else (rotation, a gripper left to the policy, later
rows, padding) is left to the policy and gets fresh noise in FRS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from frs_steering.policy import ActionSpec
from frs_steering.reasoning import CoarseProposal, Gripper


@dataclass(frozen=True)
class CartesianLayout:
    """Where an end-effector action space keeps its parts, indexed among the REAL dims.

    ``max_translation`` is the translation of one row at magnitude 1.0 ("more"), in the action's
    units (metres per control step for delta actions). Gripper commands are absolute values
    between ``gripper_open`` and ``gripper_closed``.
    """

    translation: tuple[int, int, int] = (0, 1, 2)
    rotation: tuple[int, int, int] | None = (3, 4, 5)
    gripper: int | None = 6
    max_translation: float = 0.05
    gripper_open: float = 0.0
    gripper_closed: float = 1.0

    def __post_init__(self) -> None:
        if not self.max_translation > 0:
            raise ValueError(f"max_translation must be > 0, got {self.max_translation}")


@dataclass(frozen=True)
class ReferenceChunk:
    """A reference in the policy's normalized, padded space and the elements it commands."""

    chunk: torch.Tensor  # [horizon, dim], normalized
    mask: torch.Tensor  # [horizon, dim], bool: True = commanded by the reasoner
    real: torch.Tensor  # [horizon, num_real], real units (what direct execution would send)


def cartesian_reference(
    spec: ActionSpec,
    layout: CartesianLayout,
    proposal: CoarseProposal,
    *,
    current_gripper: float | None = None,
    commanded_rows: int | None = None,
    command_rotation: bool = False,
) -> ReferenceChunk:
    """Build the reference chunk for a (non-deferring) proposal.

    Every row repeats the translation ``direction * magnitude * max_translation`` and zero
    rotation. The gripper value is the open/closed command of the proposal's intent, or
    ``current_gripper`` (same units) when kept; a kept gripper is left to the policy, i.e.
    masked out. ``commanded_rows`` limits the mask to the first rows; ``command_rotation`` also
    commands the zero rotation.
    """
    if proposal.defer:
        raise ValueError(f"a deferring proposal has no reference ({proposal.reason})")
    rows = spec.horizon if commanded_rows is None else commanded_rows
    if not 0 < rows <= spec.horizon:
        raise ValueError(f"commanded_rows must be in [1, {spec.horizon}], got {commanded_rows}")
    if layout.gripper is None and proposal.gripper is not Gripper.KEEP:
        raise ValueError("this action space has no gripper dim to command")

    real = torch.zeros(spec.horizon, spec.num_real, dtype=torch.float32)
    real_mask = torch.zeros(spec.horizon, spec.num_real, dtype=torch.bool)
    step = proposal.direction * proposal.magnitude * layout.max_translation
    real[:, list(layout.translation)] = torch.as_tensor(step, dtype=torch.float32)
    real_mask[:rows, list(layout.translation)] = True
    if layout.rotation is not None and command_rotation:
        real_mask[:rows, list(layout.rotation)] = True
    if layout.gripper is not None:
        if proposal.gripper is Gripper.KEEP:
            kept = layout.gripper_open if current_gripper is None else current_gripper
            real[:, layout.gripper] = float(kept)
        else:
            closed = proposal.gripper is Gripper.CLOSE
            real[:, layout.gripper] = layout.gripper_closed if closed else layout.gripper_open
            real_mask[:rows, layout.gripper] = True

    mask = torch.zeros(spec.horizon, spec.dim, dtype=torch.bool)
    mask[:, list(spec.real_dims)] = real_mask  # type: ignore[arg-type]
    return ReferenceChunk(chunk=spec.to_policy(real), mask=mask, real=real)
