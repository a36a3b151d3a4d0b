"""Policy observations and references rebuilt from robot messages, for the node and for replay.

One place for how a chunk's inputs are made from what a rig publishes, so the steering node
(live messages) and the bag replay evaluator (messages read back from a rosbag2 file) build
bit-identical observations and references:

- :func:`joint_sample` / :func:`scene_sample` turn a ``sensor_msgs/JointState`` and an
  ``frs_msgs/ObjectStates`` into plain samples (arm joints, gripper opening, cube and mat poses);
- :func:`build_observation` makes the policy input (the 46-d tabletop state from FK of the
  joints, plus the instruction embedding);
- :func:`build_reference` makes the reference chunk and mask in the policy's space from an
  ``frs_msgs/CoarseReference`` with the node's reference settings (:class:`ReferenceSettings`).

Messages are read by attribute only (duck typing), so rclpy messages and the dataclasses
``rosbags`` deserializes into both work. No rclpy. Problems raise :class:`ObservationError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from frs_control.messages import MessageError, chunk_from_msg
from frs_sim.env import tabletop_state, yaw_of_quaternion, yaw_of_rotation
from frs_steering.policy import ActionSpec
from frs_steering.reference import CartesianLayout, cartesian_reference
from frs_steering.ros_messages import proposal_from_msg

FINGER_OPEN_SUM = 0.08  # m; finger joint positions summed at a fully open gripper


class ObservationError(ValueError):
    """An observation or reference cannot be built; ``str(err)`` names the reason."""


@dataclass(frozen=True)
class JointSample:
    stamp_ns: int
    arm: np.ndarray  # (7,) rad
    gripper_opening: float  # [0, 1], 1 = open


@dataclass(frozen=True)
class SceneSample:
    stamp_ns: int
    objects: np.ndarray  # (n, 3) m, base frame
    object_yaws: np.ndarray  # (n,) rad
    targets: np.ndarray  # (m, 3) m, base frame


@dataclass(frozen=True)
class StampedObservation:
    """What one goal conditions on: the policy observation, its stamp and the EE position."""

    stamp_ns: int
    policy_input: dict[str, torch.Tensor]
    ee_position: np.ndarray
    gripper_opening: float
    scene_stamp_ns: int = 0
    instruction: str = ""


@dataclass(frozen=True)
class ReferenceSettings:
    """The steering node's settings that shape a reference (parameters of the same names)."""

    frame_id: str = "fr3_link0"
    action_space: str = "ee_delta"
    max_translation: float = 0.05
    commanded_rows: int = 0  # 0 = all rows
    command_rotation: bool = False

    def layout(self) -> CartesianLayout:
        return CartesianLayout(max_translation=self.max_translation)


@dataclass(frozen=True)
class BuiltReference:
    """Reference and mask in the policy's space (``normalized`` says which) and real units."""

    chunk: torch.Tensor
    mask: torch.Tensor | None
    normalized: bool
    real: torch.Tensor | None  # None for a deferral


def stamp_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time``-like object as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def joint_sample(
    msg: Any, arm_joints: Sequence[str], finger_joints: Sequence[str]
) -> JointSample | None:
    """Arm joints and gripper opening of a JointState; None if names are missing or not finite."""
    index = {name: i for i, name in enumerate(msg.name)}
    try:
        arm = np.array([msg.position[index[n]] for n in arm_joints], dtype=np.float64)
        fingers = float(sum(msg.position[index[n]] for n in finger_joints))
    except (KeyError, IndexError):
        return None
    if not np.all(np.isfinite(arm)) or not math.isfinite(fingers):
        return None
    opening = float(np.clip(fingers / FINGER_OPEN_SUM, 0.0, 1.0))
    return JointSample(stamp_ns(msg.header.stamp), arm, opening)


def scene_sample(msg: Any, object_names: Sequence[str], target_names: Sequence[str]) -> SceneSample:
    """Cube and mat poses of an ObjectStates; ObservationError naming a missing entry."""
    poses = dict(zip(msg.names, msg.poses, strict=False))
    try:
        objects = [poses[n] for n in object_names]
        targets = [poses[n] for n in target_names]
    except KeyError as missing:
        raise ObservationError(f"frs/object_states lacks {missing}") from None

    def position(p: Any) -> list[float]:
        return [p.position.x, p.position.y, p.position.z]

    def yaw(p: Any) -> float:
        q = p.orientation
        return yaw_of_quaternion((q.w, q.x, q.y, q.z))

    return SceneSample(
        stamp_ns=stamp_ns(msg.header.stamp),
        objects=np.array([position(p) for p in objects]),
        object_yaws=np.array([yaw(p) for p in objects]),
        targets=np.array([position(p) for p in targets]),
    )


def instruction_embedding(
    text: str, embed: Callable[[str], np.ndarray] | None
) -> torch.Tensor | None:
    """The ``[1, 384]`` instruction input the policy sees (clipped as the environment does)."""
    if embed is None:
        return None
    vector = np.clip(embed(text.strip()), -1.0, 1.0)
    return torch.as_tensor(vector, dtype=torch.float32).reshape(1, -1)


def build_observation(
    joints: JointSample,
    scene: SceneSample,
    instruction: torch.Tensor | None,
    kinematics: Any,
    *,
    needs_instruction: bool,
    instruction_text: str = "",
) -> StampedObservation:
    """The policy observation at ``joints.stamp_ns`` (EE pose by FK of ``kinematics``)."""
    ee_position, ee_rotation = kinematics.forward(joints.arm)
    state = tabletop_state(
        ee_position,
        yaw_of_rotation(ee_rotation),
        joints.gripper_opening,
        joints.arm,
        scene.objects,
        scene.object_yaws,
        scene.targets,
    )
    policy_input = {"state": torch.from_numpy(state).reshape(1, -1)}
    if needs_instruction:
        if instruction is None:
            raise ObservationError("no observation: no instruction received on frs/instruction")
        policy_input["instruction"] = instruction
    return StampedObservation(
        joints.stamp_ns,
        policy_input,
        ee_position,
        joints.gripper_opening,
        scene_stamp_ns=scene.stamp_ns,
        instruction=instruction_text,
    )


def build_reference(
    spec: ActionSpec,
    settings: ReferenceSettings,
    coarse: Any,
    gripper_opening: float,
) -> BuiltReference:
    """Reference chunk, mask and real-unit reference of a CoarseReference, in the policy's space.

    A deferral gives a zero normalized reference (the policy acts on its own); a full reference
    chunk is checked against the policy's shape; otherwise the direction becomes a Cartesian
    reference with ``settings``. ObservationError (or MessageError) names a bad field.
    """
    frame = settings.frame_id
    if coarse.header.frame_id not in ("", frame):
        raise ObservationError(
            f"reference.header.frame_id {coarse.header.frame_id!r} is not {frame!r} "
            "(no tf2 in this node)"
        )
    if coarse.defer:
        return BuiltReference(torch.zeros(spec.chunk_shape), None, True, None)
    if len(coarse.chunk.data):
        return _full_reference(spec, settings, coarse)
    proposal = proposal_from_msg(coarse)
    layout = settings.layout()
    # 1 = open in the observation; the action's gripper is 0 = open.
    current = layout.gripper_open + (1.0 - gripper_opening) * (
        layout.gripper_closed - layout.gripper_open
    )
    rows = int(settings.commanded_rows)
    try:
        built = cartesian_reference(
            spec,
            layout,
            proposal,
            current_gripper=current,
            commanded_rows=min(rows, spec.horizon) or None,
            command_rotation=bool(settings.command_rotation),
        )
    except ValueError as error:
        raise ObservationError(f"reference: {error}") from None
    return BuiltReference(built.chunk, built.mask, True, built.real)


def _full_reference(spec: ActionSpec, settings: ReferenceSettings, coarse: Any) -> BuiltReference:
    """A reasoner's full reference chunk (and mask), checked against the policy's shape."""
    chunk = coarse.chunk
    if chunk.action_space not in ("", settings.action_space):
        raise ObservationError(
            f"reference.chunk.action_space {chunk.action_space!r} is not {settings.action_space!r}"
        )
    rows = chunk_from_msg(chunk, "reference.chunk")
    widths = (spec.dim,) if chunk.normalized else (spec.num_real, spec.dim)
    if chunk.horizon != spec.horizon or chunk.dim not in widths:
        want = " or ".join(f"{spec.horizon}x{w}" for w in widths)
        space_name = "normalized" if chunk.normalized else "real-unit"
        raise ObservationError(
            f"reference.chunk is {chunk.horizon}x{chunk.dim}; the policy needs {want} "
            f"({space_name})"
        )
    mask = None
    if len(coarse.mask):
        if len(coarse.mask) != rows.size:
            raise ObservationError(
                f"reference.mask has {len(coarse.mask)} entries, the chunk {rows.size}"
            )
        mask = torch.from_numpy(np.asarray(coarse.mask, dtype=bool).reshape(rows.shape))
    reference = torch.from_numpy(rows.copy())
    real_dims = list(spec.real_dims)
    if not chunk.normalized and chunk.dim == spec.dim and spec.has_padding:
        reference = reference[:, real_dims]  # a padded real-unit chunk: drop the padding
        mask = None if mask is None else mask[:, real_dims]
    real = spec.from_policy(reference) if chunk.normalized else reference
    return BuiltReference(reference, mask, bool(chunk.normalized), real)


def method_and_params(
    method: str,
    *,
    defer: bool,
    noise_scale: float,
    partial_time: float,
    num_samples: int,
    max_samples: int | None = None,
) -> tuple[str, dict[str, float | int]]:
    """The method that runs for a SteerChunk goal's settings and its :func:`steer` params.

    Empty = ``frs``; a deferring reference runs ``base`` (the policy acts on its own), except
    for ``noise_policy``, which needs no reference (the caller adds the network as the
    ``noise_policy`` param). ``partial_time`` / ``num_samples`` of 0 mean the method's
    default. ObservationError names an out-of-range setting.
    """
    method = method or "frs"
    if defer and method != "noise_policy":
        method = "base"
    params: dict[str, float | int] = {}
    if method in ("frs", "noise_policy"):
        if not (math.isfinite(noise_scale) and 0.0 <= noise_scale <= 10.0):
            raise ObservationError(f"noise_scale must be in [0, 10], got {noise_scale}")
        params["noise_scale"] = float(noise_scale)
    elif method == "partial_noising":
        if not (math.isfinite(partial_time) and 0.0 <= partial_time <= 1.0):
            raise ObservationError(f"partial_time must be in (0, 1], got {partial_time}")
        if partial_time > 0.0:
            params["noise_level"] = float(partial_time)
    elif method == "sample_rank":
        if max_samples is not None and num_samples > max_samples:
            raise ObservationError(f"num_samples {num_samples} exceeds max_samples {max_samples}")
        if num_samples > 0:
            params["num_samples"] = int(num_samples)
    return method, params


def reference_cosine(chunk: torch.Tensor, reference: torch.Tensor, steered: torch.Tensor) -> float:
    """Cosine similarity of one refined chunk and its reference over the steered elements
    (normalized space), as ``SteeringDiagnostics.reference_cosine`` reports it."""
    weights = steered.to(chunk.dtype)
    a, b = (chunk * weights).flatten(), (reference * weights).flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0, eps=1e-12))


def padded_real(spec: ActionSpec, real: torch.Tensor) -> np.ndarray:
    """Real-unit ``[horizon, num_real]`` rows placed in the policy's padded row layout."""
    rows = np.zeros(spec.chunk_shape, dtype=np.float32)
    rows[:, list(spec.real_dims)] = real.detach().cpu().numpy()
    return rows


def ee_path(start: np.ndarray, real: torch.Tensor, translation: Sequence[int]) -> np.ndarray:
    """``(horizon + 1, 3)`` EE positions from ``start``, accumulating the translation rows."""
    steps = real[:, list(translation)].detach().cpu().numpy().astype(np.float64)
    start = np.asarray(start, dtype=np.float64)
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


__all__ = [
    "FINGER_OPEN_SUM",
    "BuiltReference",
    "JointSample",
    "MessageError",
    "ObservationError",
    "ReferenceSettings",
    "SceneSample",
    "StampedObservation",
    "build_observation",
    "build_reference",
    "ee_path",
    "instruction_embedding",
    "joint_sample",
    "method_and_params",
    "padded_real",
    "reference_cosine",
    "scene_sample",
]
