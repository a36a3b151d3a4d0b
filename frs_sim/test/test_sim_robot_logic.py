"""The simulated robot's decisions without ROS: arm commands, episode schedule, cameras."""

from __future__ import annotations

import math

import numpy as np
import pytest

from frs_sim import scene
from frs_sim.sim_robot import (
    GENERIC_CAMERA,
    ArmCommand,
    CameraStream,
    EpisodeSchedule,
    camera_streams,
    gripper_command,
    pinhole_intrinsics,
)
from frs_sim.tasks import get_split

NAMES = [f"j{i}" for i in range(1, 8)]


def _targets(command: ArmCommand, now: float, elapsed: float = 0.01, lead: float = 10.0):
    return command.targets(now, elapsed, np.zeros(7), np.zeros(7), 0.1, lead)


def test_velocity_integrates_until_it_times_out_and_targets_stay_leashed():
    command = ArmCommand()
    np.testing.assert_array_equal(_targets(command, 0.0), np.zeros(7))  # holds at start
    command.set_velocity([1.0, 0, 0, 0, 0, 0, -2.0], now=1.0)
    np.testing.assert_allclose(_targets(command, 1.05)[[0, 6]], [0.01, -0.02])
    assert _targets(command, 1.05, elapsed=1.0, lead=0.2)[6] == pytest.approx(-0.2)
    np.testing.assert_array_equal(_targets(command, 1.2), np.zeros(7))  # older than 0.1 s
    command.set_velocity([1.0, 0, 0, 0, 0, 0, -2.0], now=2.0)
    for bad in ([1.0] * 6, [math.nan] * 7):
        with pytest.raises(ValueError, match="7 finite values"):
            command.set_velocity(bad, now=2.0)
    assert command.mode == "velocity" and command.velocity[0] == 1.0  # unchanged


def test_a_timed_out_velocity_command_stops_the_arm_where_it_is():
    """Commands stop (controller killed or stalled): the targets' lead over the arm is dropped
    at once, as a real driver's command timeout stops the arm, instead of being driven to."""
    command = ArmCommand()
    command.set_velocity([1.0] * 7, now=1.0)
    ahead, measured = np.full(7, 0.15), np.full(7, 0.05)  # targets lead the lagging arm
    target = command.targets(1.05, 0.01, ahead, measured, 0.1, 0.2)
    np.testing.assert_allclose(target, 0.16)
    stopped = command.targets(1.2, 0.01, target, measured, 0.1, 0.2)
    np.testing.assert_array_equal(stopped, measured)
    assert command.mode == "hold"
    later = command.targets(1.3, 0.01, stopped, measured - 0.01, 0.1, 0.2)
    np.testing.assert_array_equal(later, stopped)  # then holds that position


def test_trajectory_reorders_joints_skips_past_points_and_rejects_bad_ones():
    command = ArmCommand()
    names = list(reversed(NAMES))
    q = np.arange(7.0)[::-1]  # in message order: joint j7 first
    command.set_trajectory(names, NAMES, 10.0, [(-1.0, q * 9), (1.0, q)], 10.0, np.zeros(7))
    assert command.mode == "trajectory"
    np.testing.assert_allclose(_targets(command, 10.5), 0.5 * np.arange(7.0))
    np.testing.assert_allclose(_targets(command, 12.0), np.arange(7.0))
    before = command.trajectory
    with pytest.raises(ValueError, match="lack one of"):
        command.set_trajectory(NAMES[:6], NAMES, 0.0, [(1.0, [0.0] * 6)], 0.0, np.zeros(7))
    with pytest.raises(ValueError, match="bad positions"):
        command.set_trajectory(NAMES, NAMES, 0.0, [(1.0, [math.inf] * 7)], 0.0, np.zeros(7))
    with pytest.raises(ValueError, match="in the past"):
        command.set_trajectory(NAMES, NAMES, 0.0, [(1.0, [0.0] * 7)], 5.0, np.zeros(7))
    assert command.trajectory is before
    command.set_velocity([0.0] * 7, now=13.0)  # the latest kind wins
    assert command.trajectory is None and command.mode == "velocity"


def test_gripper_command_is_clipped_and_bad_ones_rejected():
    assert gripper_command([1.5]) == 1.0 and gripper_command([0.25]) == 0.25
    for bad in ([], [0.1, 0.2], [math.nan]):
        with pytest.raises(ValueError, match="one finite value"):
            gripper_command(bad)


def test_episode_schedule_cycles_tasks_and_counts_seeds():
    tasks = get_split("novel")
    schedule = EpisodeSchedule(tasks, "novel", first_seed=7)
    assert schedule.next() == (7, {"task": tasks[0].name})
    named = tasks[3]
    template = named.template_ids[0]
    assert schedule.next(named.name, 40, template) == (
        40,
        {"task": named.name, "template_id": template},
    )
    assert schedule.next() == (41, {"task": tasks[4].name})  # after the named task, next seed
    with pytest.raises(ValueError, match="not in split 'novel'"):
        schedule.next("no_such_task")
    with pytest.raises(ValueError, match="not among"):
        schedule.next(named.name, template_id=max(named.template_ids) + 100)
    assert schedule.next() == (42, {"task": tasks[5].name})  # errors changed nothing


def test_camera_streams_map_names_to_topics_and_reject_unknown_or_repeated():
    assert camera_streams([GENERIC_CAMERA], "top", "optical") == [
        CameraStream("camera", "top", "optical")
    ]
    streams = camera_streams(["front", "top", "wrist"], "front", "optical")
    assert [(s.topic, s.camera) for s in streams] == [(n, n) for n in ("front", "top", "wrist")]
    assert streams[2].frame_id == "wrist_camera_optical_frame"
    with pytest.raises(ValueError, match="unknown camera 'side'"):
        camera_streams(["front", "side"], "front", "optical")
    with pytest.raises(ValueError, match="twice"):
        camera_streams(["top", "top"], "front", "optical")
    with pytest.raises(ValueError, match="is not one of"):
        camera_streams([], "side", "optical")


def test_pinhole_intrinsics_follow_each_cameras_field_of_view():
    model = scene.build_model()
    focal, cx, cy = pinhole_intrinsics(model, "top", 160, 120)
    assert (cx, cy) == (80.0, 60.0)
    assert focal == pytest.approx(60.0 / math.tan(math.radians(45.0) / 2))
    assert pinhole_intrinsics(model, "wrist", 160, 120)[0] < focal  # wider lens
