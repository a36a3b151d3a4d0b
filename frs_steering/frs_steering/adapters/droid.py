"""A DROID-style rig: two exterior cameras and a wrist camera, joint velocities at 15 Hz.

Observation (as DROID policies read it): one RGB image per camera (``sensor_msgs/Image`` topics
named by parameter, resized to the policy's input size), the state = 7 arm joint positions (rad)
+ gripper opening in [0, 1] (1 = open), and the instruction when the policy reads one. Actions:
7 joint velocities (rad/s) then the gripper command in [0, 1] (0 = open), 15 rows per second. A
reasoner's Cartesian direction becomes joint velocities through the arm's Jacobian
(:meth:`ActionLayout.reference`), so the proposer stays robot-agnostic.

For the built-in flow policy the images are ``image.<camera>`` inputs (``FlowPolicyConfig``
``image_keys`` = the camera names, ``image_size``) and the state is ``state`` (8-d).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from frs_control.messages import image_msg_to_rgb
from frs_steering.adapters.base import (
    JointSample,
    ObservationAdapter,
    ObservationError,
    Sample,
    StampedObservation,
    StreamSpec,
    require_streams,
)

DROID_CAMERAS = ("exterior_1", "exterior_2", "wrist")


def resize_nearest(image: np.ndarray, size: int) -> np.ndarray:
    """``size x size`` nearest-neighbour resample of an HxWxC image (pixel centres aligned)."""
    height, width = image.shape[:2]
    rows = np.minimum(((np.arange(size) + 0.5) * height / size).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * width / size).astype(np.int64), width - 1)
    return image[rows[:, None], cols[None, :]]


class DroidAdapter(ObservationAdapter):
    """Cameras + joints + gripper -> a DROID-style policy observation (see the module doc)."""

    name = "droid"
    ACTION_SPACE = "joint_velocity"
    DEFAULT_DIM_NAMES = tuple(f"joint{i}_velocity" for i in range(1, 8)) + ("gripper",)
    DEFAULT_CONTROL_DT = 1.0 / 15.0
    OPTIONS = (
        ("cameras", list(DROID_CAMERAS), "camera names, in the policy's order"),
        (
            "image_topics",
            [f"{name}/image_raw" for name in DROID_CAMERAS],
            "sensor_msgs/Image topic of each camera",
        ),
        ("image_tolerance", 0.1, "s an image may be away from the joint stamp (unsynchronized)"),
    )

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.cameras = tuple(str(c) for c in self.options["cameras"])
        self.image_topics = tuple(str(t) for t in self.options["image_topics"])
        if len(self.cameras) != len(self.image_topics) or len(set(self.cameras)) != len(
            self.cameras
        ):
            raise ValueError(
                f"need one image topic per distinct camera, got cameras {list(self.cameras)} "
                f"and image_topics {list(self.image_topics)}"
            )
        self.image_tolerance = float(self.options["image_tolerance"])
        if not 0.0 <= self.image_tolerance <= 10.0:
            raise ValueError(f"image_tolerance must be in [0, 10] s, got {self.image_tolerance}")
        self.image_size = 0
        self.state_dim = len(self.arm_joints) + 1

    def streams(self) -> tuple[StreamSpec, ...]:
        return tuple(
            StreamSpec(camera, "sensor_msgs/msg/Image", topic, self.image_tolerance)
            for camera, topic in zip(self.cameras, self.image_topics, strict=True)
        )

    def check_policy(self, policy: Any) -> None:
        config = getattr(policy, "config", None)
        keys = tuple(getattr(config, "image_keys", ()))
        if keys != self.cameras:
            raise ValueError(
                f"the policy observes cameras {list(keys)}; cameras are {list(self.cameras)}"
            )
        if getattr(config, "state_dim", None) != self.state_dim:
            raise ValueError(
                f"the policy's state is {getattr(config, 'state_dim', None)}-d; the droid state "
                f"is {self.state_dim}-d ({len(self.arm_joints)} joints + gripper)"
            )
        self.image_size = int(config.image_size)

    def parse(self, key: str, msg: Any) -> np.ndarray:
        """The RGB image of one camera message, resized to the policy's input."""
        try:
            rgb = image_msg_to_rgb(msg)
        except ValueError as error:
            raise ObservationError(f"camera {key!r}: {error}") from None
        if self.image_size:
            rgb = resize_nearest(rgb, self.image_size)
        return rgb

    def observation(
        self,
        joints: JointSample,
        samples: Mapping[str, Sample],
        instruction: Any | None,
        instruction_text: str = "",
    ) -> StampedObservation:
        require_streams(samples, self.cameras)
        state = np.concatenate([joints.arm, [joints.gripper_opening]]).astype(np.float32)
        policy_input = {"state": torch.from_numpy(state).reshape(1, -1)}
        for camera in self.cameras:
            image = samples[camera].value
            tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
            policy_input[f"image.{camera}"] = (tensor.float() / 255.0).unsqueeze(0)
        self.add_instruction(policy_input, instruction)
        return self.stamped(joints, policy_input, samples, instruction_text)
