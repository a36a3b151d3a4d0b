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
    plan_ee_delta,
    plan_joint_velocity,
    schedule_rows,
    validate_chunk,
    velocity_command,
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
        ({}, np.tile([0, 0, 0, 0, 0, 0, 3.0, 0], (10, 1)), "gripper"),
    ],
)
def test_bad_chunks_are_rejected_with_a_reason(
    overrides: dict[str, object], rows: np.ndarray | None, reason: str
) -> None:
    base = _ee_rows() if rows is None else rows
    with pytest.raises(ChunkRejected) as err:
        validate_chunk(_request(base, **overrides), NOW, LIMITS)
    assert reason in str(err.value)


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
