"""The simulated tabletop's observation adapter (``observation_adapter: tabletop``).

Observation: the tabletop state (:func:`frs_sim.env.tabletop_state`: EE pose by forward
kinematics of ``joint_states``, gripper opening, joints, cube and mat poses from
``frs/object_states``; for policies that read motion, the EE velocity from the Jacobian and the
joint velocities of ``joint_states``) plus the MiniLM embedding of the instruction. Actions:
end-effector deltas in the base frame (``dx dy dz droll dpitch dyaw gripper`` + one padding
dim), 10 rows per second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from frs_sim import scene
from frs_sim.env import (
    POLICY_STATE_DIMS,
    POSITION_STATE_DIM,
    STATE_DIM,
    policy_state,
    tabletop_state,
    yaw_of_quaternion,
    yaw_of_rotation,
)
from frs_steering.adapters.base import (
    JointSample,
    ObservationAdapter,
    ObservationError,
    Sample,
    StampedObservation,
    StreamSpec,
    require_streams,
)

OBJECTS = "objects"


@dataclass(frozen=True)
class SceneSample:
    """Cube and mat poses of one ``frs/object_states`` message, base frame."""

    objects: np.ndarray  # (n, 3) m
    object_yaws: np.ndarray  # (n,) rad
    targets: np.ndarray  # (m, 3) m


class TabletopAdapter(ObservationAdapter):
    """Joints + object ground truth + instruction -> the tabletop policy's observation."""

    name = "tabletop"
    ACTION_SPACE = "ee_delta"
    DEFAULT_DIM_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper", "pad0")
    DEFAULT_CONTROL_DT = 0.1
    OPTIONS = (
        ("objects_topic", "frs/object_states", "frs_msgs/ObjectStates topic of cubes and mats"),
        (
            "object_names",
            [f"{name}_cube" for name in scene.OBJECT_NAMES],
            "ObjectStates names of the cubes, state order",
        ),
        (
            "target_names",
            [f"{name}_mat" for name in scene.TARGET_NAMES],
            "ObjectStates names of the mats, state order",
        ),
    )

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.state_dim = POSITION_STATE_DIM  # set by bind() from the policy
        self.object_names = tuple(str(n) for n in self.options["object_names"])
        self.target_names = tuple(str(n) for n in self.options["target_names"])
        if len(self.object_names) != len(scene.OBJECT_NAMES) or len(self.target_names) != len(
            scene.TARGET_NAMES
        ):
            raise ValueError(
                f"need {len(scene.OBJECT_NAMES)} object_names and {len(scene.TARGET_NAMES)} "
                f"target_names, got {list(self.object_names)} and {list(self.target_names)}"
            )
        if len(self.arm_joints) != 7 or len(self.finger_joints) != 2:
            raise ValueError("the tabletop needs 7 arm_joints and 2 finger_joints")

    def streams(self) -> tuple[StreamSpec, ...]:
        return (
            StreamSpec(OBJECTS, "frs_msgs/msg/ObjectStates", str(self.options["objects_topic"])),
        )

    def check_policy(self, policy: Any) -> None:
        config = getattr(policy, "config", None)
        state_dim = getattr(config, "state_dim", None)
        if state_dim not in POLICY_STATE_DIMS:
            raise ValueError(
                f"the policy expects state_dim {state_dim}; the tabletop state is "
                f"{POSITION_STATE_DIM}-d (positions) or {STATE_DIM}-d (positions and EE velocity)"
            )
        if getattr(config, "image_keys", ()):
            raise ValueError("the tabletop adapter provides no camera images")
        self.state_dim = int(state_dim)

    @property
    def reads_motion(self) -> bool:
        """Whether the bound policy reads the EE velocity (joint_states must carry velocities)."""
        return self.state_dim > POSITION_STATE_DIM

    def parse(self, key: str, msg: Any) -> SceneSample:
        """Cube and mat poses of an ObjectStates message, in the adapter's frame."""
        frame = self.layout.frame_id
        if msg.header.frame_id not in ("", frame):
            raise ObservationError(
                f"{self.options['objects_topic']} in frame {msg.header.frame_id!r}, expected "
                f"{frame!r} (no tf2 here)"
            )
        poses = dict(zip(msg.names, msg.poses, strict=False))
        try:
            objects = [poses[n] for n in self.object_names]
            targets = [poses[n] for n in self.target_names]
        except KeyError as missing:
            raise ObservationError(f"{self.options['objects_topic']} lacks {missing}") from None
        values = [[p.position.x, p.position.y, p.position.z] for p in objects + targets]
        if not np.all(np.isfinite(values)):
            raise ObservationError(f"{self.options['objects_topic']} has non-finite poses")

        def yaw(pose: Any) -> float:
            q = pose.orientation
            return yaw_of_quaternion((q.w, q.x, q.y, q.z))

        count = len(objects)
        return SceneSample(
            objects=np.array(values[:count]),
            object_yaws=np.array([yaw(p) for p in objects]),
            targets=np.array(values[count:]),
        )

    def observation(
        self,
        joints: JointSample,
        samples: Mapping[str, Sample],
        instruction: Any | None,
        instruction_text: str = "",
    ) -> StampedObservation:
        require_streams(samples, (OBJECTS,))
        scene_sample: SceneSample = samples[OBJECTS].value
        pose = self.arm_pose(joints)
        position, rotation, jacobian = pose
        if joints.arm_velocity is not None:
            ee_velocity = jacobian[:3] @ joints.arm_velocity
        elif self.reads_motion:
            raise ObservationError(
                "no observation: joint_states carry no arm velocities, and the policy reads the "
                "EE velocity"
            )
        else:  # not read: the positions-only prefix is all the policy gets
            ee_velocity = np.zeros(3)
        state = tabletop_state(
            position,
            yaw_of_rotation(rotation),
            joints.gripper_opening,
            joints.arm,
            scene_sample.objects,
            scene_sample.object_yaws,
            scene_sample.targets,
            ee_velocity,
        )
        state = policy_state(state, self.state_dim)
        policy_input = {"state": torch.from_numpy(state).reshape(1, -1)}
        self.add_instruction(policy_input, instruction)
        return self.stamped(joints, policy_input, samples, instruction_text, pose)
