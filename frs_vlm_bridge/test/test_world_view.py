"""The proposer's pure pieces: the reasoner's view of the world, the steering goal, parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
from geometry_msgs.msg import Pose
from sensor_msgs.msg import Image, JointState

from frs_control.kinematics import ArmKinematics
from frs_control.messages import ns_to_stamp, stamp_to_ns
from frs_msgs.msg import CoarseReference, EpisodeStatus, ObjectStates
from frs_steering.reasoning import CoarseProposal, Gripper, Source, defer
from frs_vlm_bridge.goals import SteerSettings, steer_goal
from frs_vlm_bridge.proposer_params import (
    PARAMETERS,
    plan_ahead_settings,
    scripted_config,
    steer_settings,
    vlm_config,
)
from frs_vlm_bridge.world_view import LatestInputs, ViewSettings, build_view, object_positions

NOW = 5_000_000_000  # ns, node clock
ARM = tuple(f"fr3_joint{i}" for i in range(1, 8))
Q = np.array([0.1, -0.3, 0.05, -2.4, 0.02, 0.9, 0.3])
SETTINGS = ViewSettings(arm_joints=ARM, max_state_age_s=0.5, max_image_age_s=1.0)
FINGERS = ["fr3_finger_joint1", "fr3_finger_joint2"]


@pytest.fixture(scope="module")
def kinematics() -> ArmKinematics:
    return ArmKinematics()


def joints(
    age_s: float = 0.1,
    order: list[int] | None = None,
    q: np.ndarray = Q,
    fingers: tuple[float, ...] = (0.04, 0.04),
) -> JointState:
    """Arm joints in ``order`` (shuffled on purpose) plus fingers, stamped ``age_s`` ago."""
    order = order if order is not None else [3, 0, 6, 1, 5, 2, 4]
    msg = JointState(
        name=[ARM[i] for i in order] + FINGERS[: len(fingers)],
        position=[float(q[i]) for i in order] + list(fingers),
    )
    msg.header.stamp = ns_to_stamp(NOW - int(age_s * 1e9))
    return msg


def objects(names: list[str], positions: list[tuple[float, float, float]]) -> ObjectStates:
    msg = ObjectStates(names=names)
    for x, y, z in positions:
        pose = Pose()
        pose.position.x, pose.position.y, pose.position.z = x, y, z
        msg.poses.append(pose)
    return msg


def image(age_s: float, encoding: str = "rgb8") -> Image:
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    msg = Image(height=2, width=3, encoding=encoding, step=9, data=pixels.tobytes())
    msg.header.stamp = ns_to_stamp(NOW - int(age_s * 1e9))
    return msg


def test_view_has_fk_position_objects_instruction_and_image(kinematics: ArmKinematics) -> None:
    latest = LatestInputs(
        joints=joints(),
        objects=objects(["red_cube", "yellow_mat"], [(0.5, 0.1, 0.02), (0.4, -0.2, 0.0)]),
        image=image(age_s=0.5),
        instruction="put the red cube on the yellow mat",
    )
    view = build_view(latest, NOW, SETTINGS, kinematics.forward)
    assert view.observation is not None and not view.waiting and not view.image_problem
    seen = view.observation.reasoning
    # FK of the arm joints in arm_joints order, whatever order joint_states lists them in.
    np.testing.assert_allclose(seen.ee_position, kinematics.forward(Q)[0])
    assert not np.allclose(seen.ee_position, kinematics.forward(np.sort(Q))[0])
    np.testing.assert_allclose(seen.objects["red_cube"], [0.5, 0.1, 0.02])
    np.testing.assert_allclose(seen.objects["yellow_mat"], [0.4, -0.2, 0.0])
    assert seen.instruction == "put the red cube on the yellow mat"
    assert seen.image.shape == (2, 3, 3) and seen.image[1, 2, 2] == 17
    assert stamp_to_ns(view.observation.stamp) == stamp_to_ns(latest.joints.header.stamp)


@pytest.mark.parametrize(
    ("fingers", "opening"),
    [((0.04, 0.04), 1.0), ((0.01, 0.01), 0.25), ((0.0, -0.001), 0.0), ((0.05, 0.05), 1.0)],
)
def test_view_has_the_gripper_opening_of_the_finger_joints(
    kinematics: ArmKinematics, fingers: tuple[float, float], opening: float
) -> None:
    settings = ViewSettings(arm_joints=ARM, finger_joints=FINGERS, finger_open_sum=0.08)
    latest = LatestInputs(joints=joints(fingers=fingers), instruction="x")
    seen = build_view(latest, NOW, settings, kinematics.forward).observation.reasoning
    assert seen.gripper_opening == pytest.approx(opening)


@pytest.mark.parametrize("fingers", [(0.04,), (0.04, math.nan)])
def test_no_usable_finger_reading_gives_no_opening(
    kinematics: ArmKinematics, fingers: tuple[float, ...]
) -> None:
    settings = ViewSettings(arm_joints=ARM, finger_joints=FINGERS)
    for setting, msg in ((settings, joints(fingers=fingers)), (SETTINGS, joints())):
        latest = LatestInputs(joints=msg, instruction="x")
        view = build_view(latest, NOW, setting, kinematics.forward)
        assert view.observation.reasoning.gripper_opening is None  # the arm's view still stands


def test_stale_or_missing_joint_states_wait_quietly(kinematics: ArmKinematics) -> None:
    stale = LatestInputs(joints=joints(age_s=0.6), instruction="x")
    for latest in (LatestInputs(instruction="x"), stale):
        view = build_view(latest, NOW, SETTINGS, kinematics.forward)
        assert view.observation is None and "joint_states" in view.waiting and not view.bad_input


@pytest.mark.parametrize("problem", ["missing", "nan"])
def test_bad_joint_states_are_named(kinematics: ArmKinematics, problem: str) -> None:
    msg = joints(order=[0, 1, 2, 3, 4, 5]) if problem == "missing" else joints(q=Q * math.nan)
    view = build_view(LatestInputs(joints=msg, instruction="x"), NOW, SETTINGS, kinematics.forward)
    assert view.observation is None and view.bad_input and "arm joints" in view.waiting


def test_instruction_falls_back_to_the_episode_and_human_needs_none(kinematics) -> None:  # noqa: ANN001
    waiting = build_view(LatestInputs(joints=joints()), NOW, SETTINGS, kinematics.forward)
    assert waiting.observation is None and "instruction" in waiting.waiting
    assert not waiting.bad_input
    status = EpisodeStatus(instruction="push the cube")
    latest = LatestInputs(joints=joints(), status=status)
    view = build_view(latest, NOW, SETTINGS, kinematics.forward)
    assert view.observation.reasoning.instruction == "push the cube"
    human = ViewSettings(arm_joints=ARM, need_instruction=False)
    view = build_view(LatestInputs(joints=joints()), NOW, human, kinematics.forward)
    assert view.observation is not None and view.observation.reasoning.instruction == ""


def test_old_or_undecodable_images_are_left_out(kinematics: ArmKinematics) -> None:
    old = LatestInputs(joints=joints(), image=image(age_s=1.5), instruction="x")
    view = build_view(old, NOW, SETTINGS, kinematics.forward)
    assert view.observation.reasoning.image is None and not view.image_problem
    odd = LatestInputs(joints=joints(), image=image(0.1, encoding="16UC1"), instruction="x")
    view = build_view(odd, NOW, SETTINGS, kinematics.forward)
    assert view.observation.reasoning.image is None and "16UC1" in view.image_problem


def test_malformed_object_states_are_named(kinematics: ArmKinematics) -> None:
    unpaired = objects(["red_cube", "blue_cube"], [(0.5, 0.1, 0.02)])
    with pytest.raises(ValueError, match="2 names for 1 poses"):
        object_positions(unpaired)
    for msg in (unpaired, objects(["red_cube"], [(math.nan, 0.0, 0.0)])):
        view = build_view(
            LatestInputs(joints=joints(), objects=msg, instruction="x"),
            NOW,
            SETTINGS,
            kinematics.forward,
        )
        assert view.observation is None and view.bad_input and "object" in view.waiting


def test_steer_goal_carries_the_proposal_settings_and_one_stamp() -> None:
    proposal = CoarseProposal(
        source=Source.VLM, direction=np.array([0.0, 1.0, 0.0]), magnitude=0.5, gripper=Gripper.OPEN
    )
    stamp = ns_to_stamp(NOW)
    settings = SteerSettings(method="sample_rank", num_samples=8, seed=3, solver="heun")
    goal = steer_goal(
        proposal, stamp=stamp, frame_id="fr3_link0", instruction="open it", settings=settings
    )
    assert stamp_to_ns(goal.observation_stamp) == stamp_to_ns(goal.reference.header.stamp) == NOW
    assert (goal.method, goal.num_samples, goal.seed, goal.solver) == ("sample_rank", 8, 3, "heun")
    ref = goal.reference
    assert ref.source == CoarseReference.SOURCE_VLM and not ref.defer
    assert (ref.direction.x, ref.direction.y, ref.direction.z) == (0.0, 1.0, 0.0)
    assert ref.magnitude == 0.5 and ref.gripper == CoarseReference.GRIPPER_OPEN
    assert ref.header.frame_id == "fr3_link0" and ref.instruction == "open it"
    deferral = steer_goal(
        defer("VLM failed", Source.VLM),
        stamp=stamp,
        frame_id="fr3_link0",
        instruction="",
        settings=SteerSettings(),
    )
    assert deferral.reference.defer and deferral.method == "frs" and deferral.seed == -1


def test_parameter_defaults_build_the_library_settings() -> None:
    defaults = {name: default for name, default, _, _ in PARAMETERS}
    assert steer_settings(defaults.__getitem__) == SteerSettings()
    timing = plan_ahead_settings(defaults.__getitem__)
    assert (timing.enabled, timing.margin_s, timing.retry_delay_s) == (True, 0.02, 0.1)
    with pytest.raises(ValueError, match="model"):  # vlm_model must be set for the vlm backend
        vlm_config(defaults.__getitem__)
    from frs_sim.reasoner import ReasonerConfig

    assert scripted_config(defaults.__getitem__) == ReasonerConfig()
    nothing_handed_over = {
        **defaults,
        "scripted_defer_at": [""],
        "scripted_command_release": True,
        "scripted_command_grasp": True,
        "scripted_aim_error": 0.03,
    }
    config = scripted_config(nothing_handed_over.__getitem__)
    assert (config.defer_at, config.command_release, config.command_grasp) == ((), True, True)
    assert config.aim_error == 0.03
    with pytest.raises(ValueError, match="unknown points"):
        scripted_config({**defaults, "scripted_defer_at": ["grasp", "drop"]}.__getitem__)
    config = vlm_config({**defaults, "vlm_model": "m", "vlm_deadline_s": 0.0}.__getitem__)
    assert config.deadline_s is None and config.api_key_env is None
