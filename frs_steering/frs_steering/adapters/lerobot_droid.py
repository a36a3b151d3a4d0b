"""A DROID-style rig driving a LeRobot pi0 / pi0.5 checkpoint.

The same topics and action layout as :mod:`frs_steering.adapters.droid` (camera images, 7 arm
joints + gripper opening, joint velocities at 15 Hz; a Cartesian direction becomes joint
velocities through the Jacobian), but the observation is what LeRobot's checkpoint reads: each
camera ``<name>`` is the policy's ``observation.images.<name>`` (resized with padding by
LeRobot's own function), the state is ``observation.state`` in real units, and the instruction
is the ``task`` text. The checkpoint's own preprocessor normalizes the state and tokenizes the
prompt with the checkpoint's tokenizer, per observation (pi0.5 writes the discretized state
into the prompt, so tokens cannot be cached per instruction).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from frs_control.messages import image_msg_to_rgb
from frs_steering.adapters.base import (
    JointSample,
    ObservationError,
    Sample,
    StampedObservation,
    require_streams,
)
from frs_steering.adapters.droid import DroidAdapter

IMAGE_PREFIX = "observation.images."


class LeRobotDroidAdapter(DroidAdapter):
    """Cameras + joints + gripper + instruction -> a LeRobot pi0 / pi0.5 batch."""

    name = "lerobot_droid"
    DEFAULT_DIM_NAMES = DroidAdapter.DEFAULT_DIM_NAMES + tuple(f"pad{i}" for i in range(8, 32))
    OPTIONS = DroidAdapter.OPTIONS

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self._policy: Any = None

    def bind(self, policy: Any) -> None:
        super().bind(policy)
        self._instruction_dim = 1  # LeRobot policies always read a task text

    def check_policy(self, policy: Any) -> None:
        if not callable(getattr(policy, "preprocess", None)) or not hasattr(policy, "image_keys"):
            raise ValueError(
                "the lerobot_droid adapter needs a LeRobot pi0/pi05 policy (lerobot:<dir>)"
            )
        wanted = tuple(IMAGE_PREFIX + camera for camera in self.cameras)
        unknown = [key for key in wanted if key not in policy.image_keys]
        if unknown:
            raise ValueError(
                f"the policy has no cameras {unknown}; it reads {list(policy.image_keys)}"
            )
        if policy.state_dim != self.state_dim:
            raise ValueError(
                f"the policy's state is {policy.state_dim}-d; the droid state is "
                f"{self.state_dim}-d ({len(self.arm_joints)} joints + gripper)"
            )
        self._policy = policy

    def encode_instruction(self, text: str) -> str:
        """The text itself: the preprocessor tokenizes it with each observation."""
        return str(text)

    def parse(self, key: str, msg: Any) -> torch.Tensor:
        """A camera message as ``[3, h, w]`` float in [0, 1] at the policy's resolution."""
        if self._policy is None:
            raise ObservationError("the adapter is not bound to a policy")
        try:
            return self._policy.camera_image(image_msg_to_rgb(msg))
        except ValueError as error:
            raise ObservationError(f"camera {key!r}: {error}") from None

    def observation(
        self,
        joints: JointSample,
        samples: Mapping[str, Sample],
        instruction: Any | None,
        instruction_text: str = "",
    ) -> StampedObservation:
        require_streams(samples, self.cameras)
        if instruction is None:
            raise ObservationError("no observation: no instruction received on frs/instruction")
        state = np.concatenate([joints.arm, [joints.gripper_opening]]).astype(np.float32)
        frame: dict[str, Any] = {
            IMAGE_PREFIX + camera: samples[camera].value for camera in self.cameras
        }
        frame["observation.state"] = torch.from_numpy(state)
        frame["task"] = str(instruction)
        try:
            policy_input = self._policy.preprocess(frame)
        except (ValueError, KeyError) as error:
            raise ObservationError(
                f"the policy's preprocessor refused the frame: {error}"
            ) from None
        return self.stamped(joints, policy_input, samples, instruction_text)
