"""The policy I/O seam: what a robot publishes -> a policy observation, and what action dims mean.

As openpi's Inputs/Outputs transforms, an :class:`ObservationAdapter` is the one place that knows
a robot and a policy's inputs: which topics carry the observation (besides ``joint_states``,
which every adapter reads), how each message becomes a sample, how the samples of one instant
become the policy's observation, and the :class:`ActionLayout` that says what each action dim
means (end-effector deltas or joint velocities, gripper, frame, control period). The steering
node and the bag replay only buffer messages by stamp and call an adapter, so they know no cubes,
cameras or state vectors.

Messages are read by attribute only, so rclpy messages and the dataclasses ``rosbags``
deserializes both work. No rclpy import here. Problems raise :class:`ObservationError`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from frs_control.messages import (
    MessageError,
    chunk_from_msg,
    gripper_opening,
    joint_positions,
    joint_velocities,
    stamp_to_ns,
)
from frs_steering.policy import ActionSpec
from frs_steering.reasoning import Gripper
from frs_steering.reference import (
    CartesianLayout,
    JointVelocityLayout,
    cartesian_reference,
    joint_velocity_reference,
)
from frs_steering.ros_messages import proposal_from_msg

#: Action spaces an :class:`ActionLayout` can describe (``ActionChunk.action_space`` values).
ACTION_SPACES = ("ee_delta", "joint_velocity")


class ObservationError(ValueError):
    """An observation or reference cannot be built; ``str(err)`` names the reason."""


#: An adapter option: (name, default, description). The node declares it as ``adapter.<name>``.
AdapterOption = tuple[str, Any, str]


@dataclass(frozen=True)
class StreamSpec:
    """One stamped input topic an adapter needs besides ``joint_states``."""

    key: str  # the adapter's name for it, e.g. "objects" or "exterior_1"
    msg_type: str  # ROS type name, e.g. "sensor_msgs/msg/Image"
    topic: str
    #: s a sample may be away from the joint stamp (at least the node's stamp_tolerance):
    #: unsynchronized sensors, e.g. cameras at 15 Hz next to joint states at 1 kHz.
    tolerance_s: float = 0.0


@dataclass(frozen=True)
class Sample:
    """A parsed message of one stream and its ``header.stamp``."""

    stamp_ns: int
    value: Any


@dataclass(frozen=True)
class JointSample:
    """Arm joint positions and gripper opening of one ``joint_states`` message."""

    stamp_ns: int
    arm: np.ndarray  # (n,) rad
    gripper_opening: float  # [0, 1], 1 = open
    arm_velocity: np.ndarray | None = None  # (n,) rad/s; None: the message carried none


@dataclass(frozen=True)
class StampedObservation:
    """What one goal conditions on: the policy observation, its stamp and the arm's state."""

    stamp_ns: int
    policy_input: dict[str, torch.Tensor]
    joints: JointSample
    ee_position: np.ndarray | None = None  # base frame, for rviz paths (None: not drawn)
    jacobian: np.ndarray | None = None  # (6, n) EE Jacobian, for joint-velocity references
    input_stamps: Mapping[str, int] = field(default_factory=dict)  # stream key -> stamp used
    instruction: str = ""

    @property
    def gripper_opening(self) -> float:
        return self.joints.gripper_opening


@dataclass(frozen=True)
class ReferenceSettings:
    """The steering node's settings that shape a reference (parameters of the same names)."""

    frame_id: str = "fr3_link0"
    action_space: str = "ee_delta"
    max_translation: float = 0.05  # m of EE translation per row at magnitude 1.0
    commanded_rows: int = 0  # 0 = all rows
    command_rotation: bool = False


@dataclass(frozen=True)
class BuiltReference:
    """Reference and mask in the policy's space (``normalized`` says which) and real units."""

    chunk: torch.Tensor
    mask: torch.Tensor | None
    normalized: bool
    real: torch.Tensor | None  # None for a deferral


@dataclass(frozen=True)
class ActionLayout:
    """What the real action dims of a policy mean, in the order of ``spec.real_dims``.

    ``ee_delta``: translation (m per row), rotation (rad per row), gripper, in ``frame_id``.
    ``joint_velocity``: one velocity per arm joint (rad/s), then the gripper. The gripper is an
    absolute command in [0, 1] (0 = open).
    """

    action_space: str
    dim_names: tuple[str, ...]  # one per policy dim, padding included
    frame_id: str = "fr3_link0"
    control_dt: float = 0.1
    num_joints: int = 7

    def __post_init__(self) -> None:
        if self.action_space not in ACTION_SPACES:
            raise ValueError(
                f"action_space must be one of {ACTION_SPACES}, got {self.action_space!r}"
            )
        if not (math.isfinite(self.control_dt) and self.control_dt > 0):
            raise ValueError(f"control_dt must be > 0, got {self.control_dt}")

    def gripper_index(self) -> int:
        """Index of the gripper among the real dims."""
        return 6 if self.action_space == "ee_delta" else self.num_joints

    def reference(
        self,
        spec: ActionSpec,
        settings: ReferenceSettings,
        coarse: Any,
        observation: StampedObservation,
    ) -> BuiltReference:
        """Reference chunk, mask and real-unit reference of a ``CoarseReference`` message.

        A deferral gives a zero normalized reference (the policy acts on its own); a full
        reference chunk is checked against the policy's shape; a direction becomes end-effector
        deltas (``ee_delta``) or the joint velocities that move the end effector that way through
        the damped pseudo-inverse of the Jacobian (``joint_velocity``).
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
            return full_reference(spec, settings, coarse)
        proposal = proposal_from_msg(coarse)
        # 1 = open in the observation; the action's gripper is 0 = open.
        current = 1.0 - observation.gripper_opening
        rows = min(int(settings.commanded_rows), spec.horizon) or None
        try:
            if self.action_space == "ee_delta":
                layout = CartesianLayout(max_translation=settings.max_translation)
                built = cartesian_reference(
                    spec,
                    layout,
                    proposal,
                    current_gripper=current,
                    commanded_rows=rows,
                    command_rotation=bool(settings.command_rotation),
                )
            else:
                if observation.jacobian is None:
                    raise ValueError("a joint-velocity reference needs the arm's Jacobian")
                joint_layout = JointVelocityLayout(
                    num_joints=self.num_joints,
                    max_speed=settings.max_translation / self.control_dt,
                )
                built = joint_velocity_reference(
                    spec,
                    joint_layout,
                    proposal,
                    observation.jacobian,
                    current_gripper=current,
                    commanded_rows=rows,
                )
        except ValueError as error:
            raise ObservationError(f"reference: {error}") from None
        if proposal.gripper is not Gripper.KEEP and self.gripper_index() >= spec.num_real:
            raise ObservationError("reference: this action space has no gripper dim")
        return BuiltReference(built.chunk, built.mask, True, built.real)

    def translation_path(
        self, start: np.ndarray, real: torch.Tensor, jacobian: np.ndarray | None
    ) -> np.ndarray | None:
        """``(horizon + 1, 3)`` EE positions a real-unit chunk moves through (rviz paths).

        ``ee_delta`` accumulates the translation rows; ``joint_velocity`` maps each row through
        the Jacobian at the observation (first order, good for a chunk's extent).
        """
        rows = real.detach().cpu().numpy().astype(np.float64)
        if self.action_space == "ee_delta":
            steps = rows[:, :3]
        elif jacobian is not None:
            steps = rows[:, : self.num_joints] @ jacobian[:3].T * self.control_dt
        else:
            return None
        start = np.asarray(start, dtype=np.float64)
        return np.vstack([start, start + np.cumsum(steps, axis=0)])


def full_reference(spec: ActionSpec, settings: ReferenceSettings, coarse: Any) -> BuiltReference:
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


class ObservationAdapter(ABC):
    """Robot messages -> one policy's observation; see the module docstring.

    Subclasses set ``name``, ``ACTION_SPACE`` and the defaults of their layout, list their own
    ``OPTIONS`` (the node declares every option as an ``adapter.<name>`` parameter, so a YAML
    file configures it), and implement :meth:`streams`, :meth:`parse`, :meth:`check_policy`
    and :meth:`observation`.
    """

    name: ClassVar[str]
    ACTION_SPACE: ClassVar[str]
    DEFAULT_DIM_NAMES: ClassVar[tuple[str, ...]]
    DEFAULT_CONTROL_DT: ClassVar[float]
    OPTIONS: ClassVar[tuple[AdapterOption, ...]] = ()

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        known = {name: default for name, default, _ in self.all_options()}
        given = dict(options or {})
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(
                f"adapter {self.name!r} has no options {unknown}; known: {sorted(known)}"
            )
        self.options = {**known, **given}
        self.arm_joints = tuple(str(n) for n in self.options["arm_joints"])
        self.finger_joints = tuple(str(n) for n in self.options["finger_joints"])
        self.finger_open_sum = float(self.options["finger_open_sum"])
        if not self.arm_joints or not self.finger_open_sum > 0:
            raise ValueError("adapter needs arm_joints and a positive finger_open_sum")
        self.layout = ActionLayout(
            action_space=self.ACTION_SPACE,
            dim_names=tuple(str(n) for n in self.options["dim_names"]),
            frame_id=str(self.options["frame_id"]),
            control_dt=float(self.options["control_dt"]),
            num_joints=len(self.arm_joints),
        )
        self._kinematics: Any = None
        self._instruction_dim = 0

    @classmethod
    def all_options(cls) -> tuple[AdapterOption, ...]:
        """Every option of this adapter: (name, default, description)."""
        common: tuple[AdapterOption, ...] = (
            ("frame_id", "fr3_link0", "robot base frame of Cartesian actions, poses and markers"),
            ("arm_joints", [f"fr3_joint{i}" for i in range(1, 8)], "arm joints, policy order"),
            (
                "finger_joints",
                ["fr3_finger_joint1", "fr3_finger_joint2"],
                "finger joints (gripper opening = their sum / finger_open_sum)",
            ),
            ("finger_open_sum", 0.08, "m; finger joint positions summed at a fully open gripper"),
            ("control_dt", cls.DEFAULT_CONTROL_DT, "s between the rows of a chunk"),
            ("dim_names", list(cls.DEFAULT_DIM_NAMES), "one name per policy action dim"),
        )
        return common + cls.OPTIONS

    def bind(self, policy: Any) -> None:
        """Check that ``policy`` reads this observation and acts in this layout (ValueError)."""
        spec = policy.spec
        if len(self.layout.dim_names) != spec.dim:
            raise ValueError(
                f"dim_names has {len(self.layout.dim_names)} names, the policy has {spec.dim} dims"
            )
        needed = self.layout.gripper_index() + 1
        if spec.num_real < needed:
            raise ValueError(
                f"a {self.ACTION_SPACE} layout with {len(self.arm_joints)} arm joints needs "
                f">= {needed} real action dims, the policy has {spec.num_real}"
            )
        self._instruction_dim = int(getattr(getattr(policy, "config", None), "instruction_dim", 0))
        self.check_policy(policy)

    # ------------------------------------------------------------------ what subclasses define
    @abstractmethod
    def streams(self) -> tuple[StreamSpec, ...]:
        """The stamped topics (besides ``joint_states``) one observation is made of."""

    @abstractmethod
    def parse(self, key: str, msg: Any) -> Any:
        """The value of stream ``key``'s message; ObservationError if it is unusable."""

    @abstractmethod
    def check_policy(self, policy: Any) -> None:
        """Raise ValueError naming the mismatch if the policy cannot read this observation."""

    @abstractmethod
    def observation(
        self,
        joints: JointSample,
        samples: Mapping[str, Sample],
        instruction: Any | None,
        instruction_text: str = "",
    ) -> StampedObservation:
        """The policy observation of one instant (samples matched to ``joints.stamp_ns``)."""

    # ------------------------------------------------------------------ shared behaviour
    @property
    def needs_instruction(self) -> bool:
        """Whether the bound policy reads an instruction (False: it is ignored)."""
        return self._instruction_dim > 0

    def encode_instruction(self, text: str) -> Any:
        """The instruction in the policy's input form (the built-in policies' MiniLM embedding);
        called once per new text. Adapters of policies that tokenize override it."""
        from frs_steering.instructions import instruction_tensor

        return instruction_tensor(text, self._instruction_dim)

    def add_instruction(self, policy_input: dict[str, Any], instruction: Any | None) -> None:
        """Put the encoded instruction into ``policy_input`` when the policy reads one."""
        if not self.needs_instruction:
            return
        if instruction is None:
            raise ObservationError("no observation: no instruction received on frs/instruction")
        policy_input["instruction"] = instruction

    def joint_sample(self, msg: Any) -> JointSample | None:
        """Arm joints, gripper opening and (when present) arm joint velocities of a JointState;
        None if names are missing / not finite."""
        arm = joint_positions(msg, self.arm_joints)
        opening = gripper_opening(msg, self.finger_joints, self.finger_open_sum)
        if arm is None or opening is None:
            return None
        velocity = joint_velocities(msg, self.arm_joints)
        return JointSample(stamp_to_ns(msg.header.stamp), arm, opening, velocity)

    def stamped(
        self,
        joints: JointSample,
        policy_input: dict[str, Any],
        samples: Mapping[str, Sample],
        instruction_text: str = "",
        pose: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> StampedObservation:
        """The observation of ``policy_input`` at the joint stamp, with the arm's pose and
        Jacobian (``pose``: :meth:`arm_pose` already computed) and the stamps of the stream
        samples used (in :meth:`streams` order)."""
        position, _, jacobian = pose or self.arm_pose(joints)
        return StampedObservation(
            stamp_ns=joints.stamp_ns,
            policy_input=policy_input,
            joints=joints,
            ee_position=position,
            jacobian=jacobian,
            input_stamps={spec.key: samples[spec.key].stamp_ns for spec in self.streams()},
            instruction=instruction_text,
        )

    def arm_pose(self, joints: JointSample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """EE position, rotation and (6, n) Jacobian in the base frame at ``joints.arm``."""
        if self._kinematics is None:
            from frs_control.kinematics import ArmKinematics

            self._kinematics = ArmKinematics()
        position, rotation = self._kinematics.forward(joints.arm)
        return position, rotation, self._kinematics.jacobian(joints.arm)


def stamp_of(msg: Any) -> int:
    """``header.stamp`` of a message as integer nanoseconds."""
    return stamp_to_ns(msg.header.stamp)


def require_streams(samples: Mapping[str, Sample], keys: Sequence[str]) -> None:
    """ObservationError naming the first stream without a sample."""
    for key in keys:
        if samples.get(key) is None:
            raise ObservationError(f"no observation: no {key!r} sample at this stamp")


__all__ = [
    "ACTION_SPACES",
    "ActionLayout",
    "AdapterOption",
    "BuiltReference",
    "JointSample",
    "MessageError",
    "ObservationAdapter",
    "ObservationError",
    "ReferenceSettings",
    "Sample",
    "StampedObservation",
    "StreamSpec",
    "full_reference",
    "require_streams",
    "stamp_of",
]
