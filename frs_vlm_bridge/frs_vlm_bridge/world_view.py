"""The reasoner's view of the world for one chunk, built from the proposer's latest messages.

End-effector position by forward kinematics of the arm joints in ``joint_states`` (and the
gripper opening from its finger joints, when it has them), object
positions from ``frs/object_states``, the instruction (``frs/instruction``, else the episode
status's), and the camera image when it is fresh. Pure: no node and no clock (``now_ns`` is
passed in), so each rule is unit-tested; the node only logs why there is no view yet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time

from frs_control.messages import gripper_opening, image_msg_to_rgb, joint_positions, stamp_to_ns
from frs_steering.reasoning import Observation

#: Forward kinematics: joint positions -> (EE position, EE rotation); ``ArmKinematics.forward``.
ForwardKinematics = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class LatestInputs:
    """The latest message of each input topic (None until one arrived)."""

    joints: Any = None  # sensor_msgs/JointState
    objects: Any = None  # frs_msgs/ObjectStates
    image: Any = None  # sensor_msgs/Image
    instruction: str = ""
    status: Any = None  # frs_msgs/EpisodeStatus


@dataclass(frozen=True)
class ViewSettings:
    """What makes inputs usable (the node's ``arm_joints``, ``max_*_age`` parameters)."""

    arm_joints: Sequence[str]
    finger_joints: Sequence[str] = ()  # none: the reasoner gets no gripper opening
    finger_open_sum: float = 0.08  # m; finger joint positions summed at a fully open gripper
    max_state_age_s: float = 0.5
    max_image_age_s: float = 1.0
    need_instruction: bool = True  # the human backend proposes without one


@dataclass(frozen=True)
class ProposerObservation:
    """The observation one chunk is proposed, steered and executed from."""

    stamp: Time  # of the joint_states it came from
    reasoning: Observation


@dataclass(frozen=True)
class WorldView:
    """A view to propose from, or why there is none yet (``waiting``)."""

    observation: ProposerObservation | None
    waiting: str = ""
    #: The inputs are malformed (an operator must look), not merely not there yet.
    bad_input: bool = False
    #: Why a present image was left out ("" when it was used or there was none).
    image_problem: str = ""


def object_positions(msg: Any) -> dict[str, tuple[float, float, float]]:
    """Name -> (x, y, z) of an ``ObjectStates``; ValueError when names and poses do not pair."""
    if len(msg.names) != len(msg.poses):
        raise ValueError(f"frs/object_states has {len(msg.names)} names for {len(msg.poses)} poses")
    return {
        name: (pose.position.x, pose.position.y, pose.position.z)
        for name, pose in zip(msg.names, msg.poses, strict=True)
    }


def _opening(joints: Any, settings: ViewSettings) -> float | None:
    """The gripper opening of ``joints``; None without finger joints (a rig may not report
    them: the reasoner then judges a grasp by the cube's height)."""
    if not settings.finger_joints:
        return None
    return gripper_opening(joints, settings.finger_joints, settings.finger_open_sum)


def age_s(stamp: Time, now_ns: int) -> float:
    """Seconds from ``stamp`` to ``now_ns``."""
    return (now_ns - stamp_to_ns(stamp)) * 1e-9


def build_view(
    latest: LatestInputs, now_ns: int, settings: ViewSettings, forward: ForwardKinematics
) -> WorldView:
    """The reasoner's observation from ``latest`` at ``now_ns``, or why there is none."""
    joints = latest.joints
    if joints is None or age_s(joints.header.stamp, now_ns) > settings.max_state_age_s:
        return WorldView(None, waiting="waiting for fresh joint_states")
    q = joint_positions(joints, settings.arm_joints)
    if q is None:
        return WorldView(
            None,
            waiting="joint_states lacks the arm joints or has non-finite positions "
            f"(arm_joints {list(settings.arm_joints)})",
            bad_input=True,
        )
    instruction = latest.instruction
    if not instruction and latest.status is not None:
        instruction = latest.status.instruction
    if not instruction and settings.need_instruction:
        return WorldView(None, waiting="waiting for an instruction on frs/instruction")
    rgb, image_problem = None, ""
    image = latest.image
    if image is not None and age_s(image.header.stamp, now_ns) <= settings.max_image_age_s:
        try:
            rgb = image_msg_to_rgb(image)
        except ValueError as error:
            image_problem = str(error)
    try:
        objects = {} if latest.objects is None else object_positions(latest.objects)
        reasoning = Observation(
            instruction=instruction,
            ee_position=forward(q)[0],
            image=rgb,
            objects=objects,
            gripper_opening=_opening(joints, settings),
        )
    except ValueError as error:  # mismatched or non-finite object states, odd image shape
        return WorldView(None, waiting=str(error), bad_input=True, image_problem=image_problem)
    return WorldView(
        ProposerObservation(stamp=joints.header.stamp, reasoning=reasoning),
        image_problem=image_problem,
    )
