"""Chunk execution core: validation rejects, row timing drops late rows, limits clamp, paths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from frs_control.execution import (
    ChunkRejected,
    ChunkRequest,
    ExecutionLimits,
    JointPath,
    Watchdog,
    clamp_joint_step,
    clip_gripper,
    plan_chunk,
    plan_ee_delta,
    plan_joint_velocity,
    schedule_rows,
    validate_chunk,
    velocity_command,
    workspace_step,
)
from frs_control.kinematics import REST_QPOS, ArmKinematics

LIMITS = ExecutionLimits()
# The simulation's home pose: 45 cm ahead, 25 cm up, gripper pointing down (base frame).
HOME_EE_POS = np.array([0.45, 0.0, 0.25])
HOME_EE_ROT = np.diag([1.0, -1.0, -1.0])
NOW = 1000.0


def _request(rows: np.ndarray, **overrides: object) -> ChunkRequest:
    rows = np.atleast_2d(rows)
    fields = dict(
        action_space="ee_delta",
        stamp=NOW - 0.01,
        dt=0.1,
        horizon=rows.shape[0],
        dim=rows.shape[1],
        data=rows.reshape(-1),
    )
    fields.update(overrides)
    return ChunkRequest(**fields)  # type: ignore[arg-type]


def _ee_rows(n: int = 10, dx: float = 0.01) -> np.ndarray:
    rows = np.zeros((n, 8))
    rows[:, 0] = dx
    return rows


def test_valid_chunk_passes_and_keeps_shape() -> None:
    rows = validate_chunk(_request(_ee_rows()), NOW, LIMITS)
    assert rows.shape == (10, 8)


@pytest.mark.parametrize(
    ("overrides", "rows", "reason"),
    [
        ({"action_space": "cartesian_twist"}, None, "unknown action_space"),
        ({"normalized": True}, None, "normalized"),
        ({"dim": 7, "horizon": 10}, np.zeros((10, 7)), "needs dim 8"),
        ({"horizon": 9}, None, "len(data)"),
        ({"horizon": 0}, None, "horizon"),
        ({"dt": 0.0}, None, "dt"),
        ({"dt": float("nan")}, None, "dt"),
        ({"stamp": 0.0}, None, "unset"),
        ({"stamp": NOW + 1.0}, None, "future"),
        ({"dim_names": ("dx",)}, None, "dim_names"),
        ({}, np.full((10, 8), np.nan), "NaN"),
        ({}, _ee_rows(dx=0.2), "translation"),
        ({"dt": 0.02}, _ee_rows(dx=0.03), "1.0 m/s"),
        ({}, np.tile([0, 0, 0, 0.9, 0, 0, 0, 0], (10, 1)), "rotation"),
        ({"frame_id": "world"}, None, "frame"),
        ({"action_space": "joint_velocity", "frame_id": "world"}, np.zeros((10, 8)), "frame"),
        ({"action_space": "joint_velocity", "dim": 7}, np.zeros((10, 7)), "at least 8"),
    ],
)
def test_bad_chunks_are_rejected_with_a_reason(
    overrides: dict[str, object], rows: np.ndarray | None, reason: str
) -> None:
    base = _ee_rows() if rows is None else rows
    with pytest.raises(ChunkRejected) as err:
        plan_chunk(_request(base, **overrides), NOW, np.zeros(7), ArmKinematics(), LIMITS)
    assert reason in str(err.value)


@pytest.mark.parametrize("space", ["ee_delta", "joint_velocity"])
def test_out_of_range_gripper_values_are_clipped_and_counted_not_rejected(space: str) -> None:
    rows = np.zeros((6, 8))
    column = 6 if space == "ee_delta" else 7
    rows[:, column] = [0.0, 1.17, 1.0, -0.3, 0.5, 42.0]
    kin = ArmKinematics()
    q0 = _home_q(kin)  # inside the workspace: only the gripper is out of range
    plan = plan_chunk(_request(rows, action_space=space, stamp=NOW), NOW, q0, kin, LIMITS)
    np.testing.assert_array_equal(plan.gripper, [0.0, 1.0, 1.0, 0.0, 0.5, 1.0])
    assert plan.points_clamped == 3
    values, clipped = clip_gripper(np.array([-0.5, 0.2, 1.17]))
    np.testing.assert_array_equal(values, [0.0, 0.2, 1.0])
    np.testing.assert_array_equal(clipped, [True, False, True])


def test_only_the_rows_that_will_run_are_checked() -> None:
    rows = _ee_rows(15)
    rows[12, 0] = np.nan  # beyond max_points: never executed, not checked
    rows[13, 0] = 5.0
    kept = validate_chunk(_request(rows, max_points=8), NOW, LIMITS)
    assert kept.shape == (8, 8)
    with pytest.raises(ChunkRejected, match="NaN"):
        validate_chunk(_request(rows, max_points=13), NOW, LIMITS)
    with pytest.raises(ChunkRejected, match="NaN"):
        validate_chunk(_request(rows), NOW, LIMITS)


def test_joint_velocity_rows_may_be_padded_and_the_padding_is_ignored() -> None:
    rows = np.zeros((15, 32))
    rows[:, 0] = 0.3
    rows[:, 7] = 1.0
    rows[:, 8:] = 1e6  # padding columns of a 32-wide policy row: ignored, whatever they hold
    kept = validate_chunk(_request(rows, action_space="joint_velocity", dt=1 / 15), NOW, LIMITS)
    assert kept.shape == (15, 8)
    np.testing.assert_array_equal(kept, rows[:, :8])
    with pytest.raises(ChunkRejected, match="ee_delta needs dim 8"):
        validate_chunk(_request(np.zeros((5, 9))), NOW, LIMITS)


def test_droid_style_joint_velocity_chunk_at_15_hz() -> None:
    """dt = 1/15, 15 rows of (7 velocities, gripper, padding), 8 executed, late rows dropped."""
    dt = 1.0 / 15.0
    rows = np.zeros((15, 10))
    rows[:, 0] = 0.6  # rad/s
    rows[:, 4] = 2.0 * LIMITS.joint_velocity[4] * 0.9  # above the limit: clamped, not rejected
    rows[:, 7] = np.linspace(0.0, 1.17, 15)  # gripper ramps closed, ends beyond 1
    rows[:, 8:] = -7.0  # padding
    q0 = np.array([0.0, -0.2, 0.0, -2.5, 0.0, 2.3, 0.8])
    stamp = NOW - 2.5 * dt  # rows 0 and 1 are past due beyond late_tolerance
    request = _request(rows, action_space="joint_velocity", stamp=stamp, dt=dt, max_points=8)
    plan = plan_chunk(request, NOW, q0, ArmKinematics(), LIMITS)
    assert plan.points_dropped_late == 2
    assert len(plan.row_times) == 6
    np.testing.assert_allclose(plan.row_times, stamp + dt * np.arange(3, 9))
    steps = np.diff(plan.path.positions, axis=0)
    spans = np.diff(plan.path.times)
    velocity = steps / spans[:, None]
    assert np.all(np.abs(velocity) <= np.asarray(LIMITS.joint_velocity) + 1e-9)
    np.testing.assert_allclose(steps[1:, 0], 0.6 * dt)
    assert plan.points_clamped == 6  # joint 5 over its limit in every executed row
    np.testing.assert_allclose(plan.gripper, np.linspace(0.0, 1.17, 15)[2:8])
    assert plan.gripper_at(plan.row_times[-1]) == pytest.approx(1.17 * 7 / 14)


def test_joint_velocity_rows_beyond_the_hard_factor_are_rejected() -> None:
    rows = np.zeros((5, 8))
    rows[:, 0] = 1.5 * LIMITS.joint_velocity[0]  # clamped later, not rejected
    validate_chunk(_request(rows, action_space="joint_velocity"), NOW, LIMITS)
    rows[2, 3] = 2.5 * LIMITS.joint_velocity[3]
    with pytest.raises(ChunkRejected, match="row 2: joint 4"):
        validate_chunk(_request(rows, action_space="joint_velocity"), NOW, LIMITS)


def test_rows_are_timed_from_the_observation_stamp_and_late_ones_dropped() -> None:
    schedule = schedule_rows(stamp=NOW - 0.25, dt=0.1, horizon=10, now=NOW, late_tolerance=0.02)
    # rows at -0.15, -0.05 are late; row 2 at +0.05 is the first kept
    assert schedule.dropped_late == 2
    np.testing.assert_array_equal(schedule.indices, np.arange(2, 10))
    np.testing.assert_allclose(schedule.times, NOW - 0.25 + 0.1 * np.arange(3, 11))


def test_late_tolerance_keeps_a_row_just_due() -> None:
    schedule = schedule_rows(stamp=NOW - 0.11, dt=0.1, horizon=3, now=NOW, late_tolerance=0.02)
    assert schedule.dropped_late == 0


def test_max_points_limits_the_prefix_and_a_fully_stale_prefix_is_rejected() -> None:
    schedule = schedule_rows(NOW, 0.1, 15, NOW, 0.02, max_points=8)
    assert len(schedule.indices) == 8
    with pytest.raises(ChunkRejected, match="stale"):
        schedule_rows(NOW - 1.0, 0.1, 15, NOW, 0.02, max_points=8)
    with pytest.raises(ChunkRejected, match="stale"):
        schedule_rows(NOW - 5.0, 0.1, 10, NOW, 0.02)


def test_clamp_joint_step_limits_position_and_velocity() -> None:
    q0 = np.array([0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0])
    q, clamped = clamp_joint_step(q0, q0 + 0.01, 0.1, LIMITS)
    assert not clamped and np.allclose(q, q0 + 0.01)
    q, clamped = clamp_joint_step(q0, q0 + 1.0, 0.1, LIMITS)
    assert clamped
    np.testing.assert_allclose(q - q0, np.asarray(LIMITS.joint_velocity) * 0.1)
    near_limit = q0.copy()
    near_limit[3] = LIMITS.joint_upper[3] - 0.001
    target = near_limit.copy()
    target[3] += 0.05
    q, clamped = clamp_joint_step(near_limit, target, 1.0, LIMITS)
    assert clamped and q[3] == pytest.approx(LIMITS.joint_upper[3])


def test_joint_path_interpolates_and_holds_outside() -> None:
    path = JointPath(np.array([0.0, 1.0, 3.0]), np.array([[0.0], [1.0], [0.0]]))
    q, v = path.sample(0.5)
    assert q[0] == pytest.approx(0.5) and v[0] == pytest.approx(1.0)
    q, v = path.sample(2.0)
    assert q[0] == pytest.approx(0.5) and v[0] == pytest.approx(-0.5)
    q, v = path.sample(10.0)
    assert q[0] == 0.0 and v[0] == 0.0
    with pytest.raises(ValueError):
        JointPath(np.array([0.0, 0.0]), np.zeros((2, 1)))


@pytest.fixture(scope="module")
def kin() -> ArmKinematics:
    return ArmKinematics()


def _home_q(kin: ArmKinematics) -> np.ndarray:
    return kin.inverse(HOME_EE_POS, HOME_EE_ROT, REST_QPOS, max_iters=200).qpos


def test_ee_delta_plan_follows_the_accumulated_deltas(kin: ArmKinematics) -> None:
    q0 = _home_q(kin)
    rows = np.zeros((10, 8))
    rows[:, 1] = 0.01  # +y, 1 cm per row
    rows[5:, 6] = 1.0  # close the gripper half way through
    schedule = schedule_rows(NOW, 0.1, 10, NOW, 0.02)
    plan = plan_ee_delta(rows, schedule, 0.1, q0, NOW, kin, LIMITS)
    assert plan.points_clamped == 0 and plan.points_dropped_late == 0
    start, _ = kin.forward(q0)
    for i, q in enumerate(plan.path.positions[1:]):
        pos, rot = kin.forward(q)
        np.testing.assert_allclose(pos, start + [0.0, 0.01 * (i + 1), 0.0], atol=1e-3)
    np.testing.assert_allclose(plan.row_times, NOW + 0.1 * np.arange(1, 11))
    assert plan.gripper_at(NOW + 0.05) == 0.0 and plan.gripper_at(NOW + 0.55) == 1.0
    assert plan.rows_done(NOW + 0.35) == 3


def test_ee_delta_plan_clips_goals_to_the_workspace(kin: ArmKinematics) -> None:
    q0 = _home_q(kin)
    rows = np.zeros((10, 8))
    rows[:, 2] = -0.05  # straight down through the table
    plan = plan_ee_delta(rows, schedule_rows(NOW, 0.1, 10, NOW, 0.02), 0.1, q0, NOW, kin, LIMITS)
    assert plan.points_clamped > 0
    final, _ = kin.forward(plan.path.positions[-1])
    assert final[2] >= LIMITS.workspace_low[2] - 2e-3


# The home pose (z = 0.25 m) lies above this box: how a plan treats an EE outside its box.
LOW_BOX = dataclasses.replace(LIMITS, workspace_high=(0.8, 0.45, 0.15))


def _plan_outside(kin: ArmKinematics, step: tuple[float, float, float], n: int = 5):  # noqa: ANN202
    rows = np.zeros((n, 8))
    rows[:, 0:3] = step
    schedule = schedule_rows(NOW, 0.1, n, NOW, 0.02)
    return plan_ee_delta(rows, schedule, 0.1, _home_q(kin), NOW, kin, LOW_BOX)


def test_workspace_step_never_asks_more_than_the_row() -> None:
    low, high = np.zeros(3), np.ones(3)
    inside, outside = np.full(3, 0.5), np.array([1.5, -0.5, 0.5])
    step = workspace_step(inside, np.array([0.7, -0.2, 0.0]), low, high)
    np.testing.assert_allclose(step, [0.5, -0.2, 0.0])  # the usual clip at the wall
    np.testing.assert_allclose(workspace_step(outside, np.zeros(3), low, high), np.zeros(3))
    back = workspace_step(outside, np.array([-0.2, 0.3, 0.1]), low, high)
    np.testing.assert_allclose(back, [-0.2, 0.3, 0.1])  # toward the box: as commanded
    further = workspace_step(outside, np.array([0.2, -0.3, 0.1]), low, high)
    np.testing.assert_allclose(further, [0.0, 0.0, 0.1])  # further out: stopped on that axis
    across = workspace_step(outside, np.array([-3.0, 0.0, 0.0]), low, high)
    np.testing.assert_allclose(across, [-1.5, 0.0, 0.0])  # never past the far wall


def test_a_zero_chunk_outside_the_workspace_does_not_move_the_arm(kin: ArmKinematics) -> None:
    """Issue 14 item 2: clipping the goal made "stay" a 1.41 rad jump at 5.26 rad/s."""
    plan = _plan_outside(kin, (0.0, 0.0, 0.0))
    assert kin.forward(plan.path.positions[0])[0][2] > LOW_BOX.workspace_high[2] + 0.05
    assert np.max(np.abs(plan.path.positions - plan.path.positions[0])) < 1e-6
    assert plan.points_clamped == 0


def test_outside_the_workspace_a_move_back_runs_and_a_move_out_is_stopped(
    kin: ArmKinematics,
) -> None:
    start = kin.forward(_home_q(kin))[0]
    back = _plan_outside(kin, (0.0, 0.0, -0.01))
    assert back.points_clamped == 0
    np.testing.assert_allclose(
        kin.forward(back.path.positions[-1])[0], start - [0, 0, 0.05], atol=1e-3
    )
    out = _plan_outside(kin, (0.0, 0.01, 0.01))  # sideways and further up
    assert out.points_clamped == 5
    np.testing.assert_allclose(
        kin.forward(out.path.positions[-1])[0], start + [0, 0.05, 0], atol=1e-3
    )
    steps = np.abs(np.diff(out.path.positions, axis=0)).max()
    assert steps < 0.1  # small joint steps (5 cm over 0.5 s), no jump toward the wall


def test_joint_velocity_plan_integrates_and_clamps() -> None:
    q0 = np.array([0.0, 0.0, 0.0, -1.5, 0.0, 1.5, 0.0])
    rows = np.zeros((4, 8))
    rows[:, 0] = 0.5
    rows[3, 1] = 4.0  # above the 2.62 rad/s limit: clamped
    plan = plan_joint_velocity(rows, schedule_rows(NOW, 0.1, 4, NOW, 0.02), 0.1, q0, NOW, LIMITS)
    assert plan.points_clamped == 1
    np.testing.assert_allclose(plan.path.positions[-1][0], 0.2)
    np.testing.assert_allclose(plan.path.positions[-1][1], 0.262)


def test_velocity_command_clamps_and_corrects() -> None:
    target = np.zeros(7)
    command = velocity_command(target, np.zeros(7), np.full(7, -0.01), 5.0, LIMITS)
    np.testing.assert_allclose(command, 0.05)
    command = velocity_command(target, np.full(7, 100.0), target, 5.0, LIMITS)
    np.testing.assert_allclose(command, LIMITS.joint_velocity)


def test_watchdog_goes_stale_after_its_period() -> None:
    watchdog = Watchdog(period=0.25)
    assert watchdog.is_stale(0.0)  # nothing received yet
    watchdog.feed(10.0)
    assert not watchdog.is_stale(10.2)
    assert watchdog.is_stale(10.3)


def test_limits_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LIMITS.max_row_translation = 1.0  # type: ignore[misc]
