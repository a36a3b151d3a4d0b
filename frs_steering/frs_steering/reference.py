"""Coarse Cartesian proposals turned into reference chunks in a policy's own action space.

A reasoner says "move this way, more or less, and do this with the gripper". Steering needs a
full chunk ``[horizon, dim]`` in the policy's normalized, padded space plus a mask of the elements
the reasoner actually commands; everything else (rotation, a gripper left to the policy, later
rows, padding) is left to the policy and gets fresh noise in FRS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
    _set_gripper(real, real_mask, layout, proposal, current_gripper, rows)
    return _reference_chunk(spec, real, real_mask)


@dataclass(frozen=True)
class JointVelocityLayout:
    """A joint-velocity action space: ``num_joints`` velocities (rad/s) then the gripper.

    ``max_speed`` is the end-effector speed (m/s) a direction of magnitude 1.0 asks for;
    ``damping`` regularizes the Jacobian's pseudo-inverse near singularities (m).
    """

    num_joints: int = 7
    gripper: int | None = 7
    max_speed: float = 0.1
    damping: float = 0.05
    gripper_open: float = 0.0
    gripper_closed: float = 1.0

    def __post_init__(self) -> None:
        if not self.max_speed > 0:
            raise ValueError(f"max_speed must be > 0, got {self.max_speed}")


def joint_velocity_reference(
    spec: ActionSpec,
    layout: JointVelocityLayout,
    proposal: CoarseProposal,
    jacobian: np.ndarray,
    *,
    current_gripper: float | None = None,
    commanded_rows: int | None = None,
) -> ReferenceChunk:
    """The joint velocities that move the end effector along a proposal's direction.

    Every row repeats ``qdot = J_v^T (J_v J_v^T + damping^2 I)^-1 v`` with ``J_v`` the linear
    rows of the ``(6, num_joints)`` Jacobian at the observation and
    ``v = direction * magnitude * max_speed``; the gripper is handled as in
    :func:`cartesian_reference`.
    """
    if proposal.defer:
        raise ValueError(f"a deferring proposal has no reference ({proposal.reason})")
    rows = spec.horizon if commanded_rows is None else commanded_rows
    if not 0 < rows <= spec.horizon:
        raise ValueError(f"commanded_rows must be in [1, {spec.horizon}], got {commanded_rows}")
    jac = np.asarray(jacobian, dtype=np.float64)
    if jac.shape != (6, layout.num_joints) or not np.all(np.isfinite(jac)):
        raise ValueError(f"jacobian must be a finite (6, {layout.num_joints}) matrix")
    if layout.num_joints + (layout.gripper is not None) > spec.num_real:
        raise ValueError(f"the policy has {spec.num_real} real dims, fewer than the layout's")
    if layout.gripper is None and proposal.gripper is not Gripper.KEEP:
        raise ValueError("this action space has no gripper dim to command")
    linear = jac[:3]
    velocity = np.asarray(proposal.direction, dtype=np.float64) * (
        proposal.magnitude * layout.max_speed
    )
    gram = linear @ linear.T + layout.damping**2 * np.eye(3)
    qdot = linear.T @ np.linalg.solve(gram, velocity)

    real = torch.zeros(spec.horizon, spec.num_real, dtype=torch.float32)
    real_mask = torch.zeros(spec.horizon, spec.num_real, dtype=torch.bool)
    joints = list(range(layout.num_joints))
    real[:, joints] = torch.as_tensor(qdot, dtype=torch.float32)
    real_mask[:rows, joints] = True
    _set_gripper(real, real_mask, layout, proposal, current_gripper, rows)
    return _reference_chunk(spec, real, real_mask)


def _set_gripper(
    real: torch.Tensor,
    real_mask: torch.Tensor,
    layout: CartesianLayout | JointVelocityLayout,
    proposal: CoarseProposal,
    current_gripper: float | None,
    rows: int,
) -> None:
    """Write the gripper column: the intent's open/closed value (commanded), or the current one
    (left to the policy, so not masked) when the proposal keeps it."""
    if layout.gripper is None:
        return
    if proposal.gripper is Gripper.KEEP:
        kept = layout.gripper_open if current_gripper is None else current_gripper
        real[:, layout.gripper] = float(kept)
    else:
        closed = proposal.gripper is Gripper.CLOSE
        real[:, layout.gripper] = layout.gripper_closed if closed else layout.gripper_open
        real_mask[:rows, layout.gripper] = True


def _reference_chunk(
    spec: ActionSpec, real: torch.Tensor, real_mask: torch.Tensor
) -> ReferenceChunk:
    """Normalize real-unit rows into the policy's padded space, with the padded mask."""
    mask = torch.zeros(spec.horizon, spec.dim, dtype=torch.bool)
    mask[:, list(spec.real_dims)] = real_mask  # type: ignore[arg-type]
    return ReferenceChunk(chunk=spec.to_policy(real), mask=mask, real=real)
