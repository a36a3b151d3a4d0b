"""The controller's state machine without ROS: streaming, preemption, stops, e-stop, watchdog.

Outputs are recorded by a plain collector implementing the loop's ``Outputs`` seam; the plans
are real ``execution`` plans.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from frs_control.control_loop import (
    FEEDFORWARD_WINDOW_S,
    HOLD_TIME,
    JOINT_JUMP_MARGIN,
    STANDSTILL_PERIOD,
    ControlLoop,
    Outcome,
    Stream,
)
from frs_control.execution import ExecutionLimits, plan_joint_velocity, schedule_rows
from frs_msgs.action import ExecuteChunk

LIMITS = ExecutionLimits()
T0 = 1000.0
Q0 = np.array([0.0, -0.2, 0.0, -2.5, 0.0, 2.3, 0.8])


class Collected:
    """Everything the loop commanded, in order."""

    def __init__(self) -> None:
        self.velocities: list[np.ndarray] = []
        self.trajectories: list[tuple[list[float], np.ndarray]] = []
        self.grippers: list[float] = []

    def velocity(self, command: np.ndarray) -> None:
        self.velocities.append(np.array(command))

    def trajectory(self, times_from_now, positions) -> None:  # noqa: ANN001
        self.trajectories.append((list(times_from_now), np.array(positions)))

    def gripper(self, value: float) -> None:
        self.grippers.append(value)


class Goal:
    """What a goal handle contributes to a stream: cancel flag, feedback, finish."""

    def __init__(self) -> None:
        self.cancel = False
        self.feedback: list[tuple[int, int]] = []
        self.finished: list[Outcome] = []

    def stream(self, plan) -> Stream:  # noqa: ANN001
        return Stream(
            plan,
            cancel_requested=lambda: self.cancel,
            publish_feedback=lambda done, total: self.feedback.append((done, total)),
            on_finish=lambda s: self.finished.append(s.outcome),
        )


def _plan(n: int = 5, velocity: float = 0.5, gripper: float = 1.0, start: float = T0):  # noqa: ANN202
    rows = np.zeros((n, 8))
    rows[:, 0] = velocity
    rows[:, 7] = gripper
    schedule = schedule_rows(start, 0.1, n, start, 0.02)
    return plan_joint_velocity(rows, schedule, 0.1, Q0, start, LIMITS)


def _loop(velocity_output: bool = True) -> tuple[ControlLoop, Collected]:
    out = Collected()
    loop = ControlLoop(
        out,
        LIMITS,
        logging.getLogger("control_loop_test"),
        velocity_output=velocity_output,
        watchdog_period=0.25,
    )
    loop.activate()
    loop.feed_joints(Q0, T0)
    return loop, out


def test_outcome_values_are_the_message_constants() -> None:
    result = ExecuteChunk.Result
    for outcome in Outcome:
        assert getattr(result, f"OUTCOME_{outcome.name}") == outcome.value


def test_not_ready_reasons() -> None:
    out = Collected()
    loop = ControlLoop(
        out, LIMITS, logging.getLogger("t"), velocity_output=True, watchdog_period=0.25
    )
    assert "not active" in loop.start_state(T0)[1]
    loop.activate()
    assert "no joint_states" in loop.start_state(T0)[1]
    loop.feed_joints(Q0, T0)
    q, problem = loop.start_state(T0 + 0.1)
    assert problem == "" and np.array_equal(q, Q0)
    assert "stale" in loop.start_state(T0 + 0.3)[1]
    loop.feed_joints(Q0, T0 + 0.3)
    loop.estop(T0 + 0.3)
    assert "e-stop" in loop.start_state(T0 + 0.3)[1]
    assert loop.reset_estop() and not loop.reset_estop()


def test_stream_commands_limited_velocities_gripper_and_feedback_then_succeeds() -> None:
    loop, out = _loop()
    goal = Goal()
    plan = _plan()
    assert loop.start(goal.stream(plan), T0) == ""
    t = T0
    while not goal.finished:
        t += 0.01
        loop.feed_joints(plan.path.sample(t)[0], t)
        loop.tick(t)
    assert goal.finished == [Outcome.SUCCEEDED]
    assert t == pytest.approx(plan.end_time, abs=0.011)
    commands = np.array(out.velocities)
    assert np.all(np.isfinite(commands))
    assert np.all(np.abs(commands) <= np.asarray(LIMITS.joint_velocity))
    assert commands[:, 0].max() == pytest.approx(0.5, abs=1e-6)
    assert set(out.grippers) == {1.0}
    assert [done for done, _ in goal.feedback] == [0, 1, 2, 3, 4, 5]
    assert {total for _, total in goal.feedback} == {5}
    # After the chunk: hold the last knot until chunk_timeout, then stop with zeros.
    loop.tick(t + 0.1)
    assert np.allclose(out.velocities[-1], 0.0, atol=1e-9)
    loop.tick(t + loop.chunk_timeout + 0.1)
    assert np.array_equal(out.velocities[-1], np.zeros(7))


def test_a_newer_stream_preempts_and_cancel_stops() -> None:
    loop, out = _loop()
    first, second = Goal(), Goal()
    loop.start(first.stream(_plan(30)), T0)
    loop.tick(T0 + 0.05)
    loop.start(second.stream(_plan(30)), T0 + 0.06)
    assert first.finished == [Outcome.PREEMPTED]
    second.cancel = True
    loop.tick(T0 + 0.07)
    assert second.finished == [Outcome.CANCELED]
    assert np.array_equal(out.velocities[-1], np.zeros(7))


def test_watchdog_estop_and_deactivation_stop_with_zeros() -> None:
    for stop in ("watchdog", "estop", "deactivate"):
        loop, out = _loop()
        goal = Goal()
        loop.start(goal.stream(_plan(30)), T0)
        loop.tick(T0 + 0.05)
        if stop == "watchdog":
            loop.tick(T0 + 0.3)  # no joint state since T0
        elif stop == "estop":
            loop.estop(T0 + 0.06)
        else:
            loop.deactivate(T0 + 0.06)
        assert goal.finished == [Outcome.STOPPED], stop
        assert np.array_equal(out.velocities[-1], np.zeros(7)), stop
        assert loop.stream is None


def test_standstill_repeats_zeros_at_a_low_rate() -> None:
    loop, out = _loop()
    for i in range(50):
        t = T0 + 0.01 * i
        loop.feed_joints(Q0, t)
        loop.tick(t)
    assert all(np.array_equal(v, np.zeros(7)) for v in out.velocities)
    assert len(out.velocities) == pytest.approx(0.5 / STANDSTILL_PERIOD, abs=1)


def test_trajectory_output_sends_the_remaining_knots_then_a_hold() -> None:
    loop, out = _loop(velocity_output=False)
    goal = Goal()
    plan = _plan(5)
    loop.start(goal.stream(plan), T0 + 0.15)  # the first row is already due
    times, positions = out.trajectories[0]
    np.testing.assert_allclose(times, plan.path.times[2:] - (T0 + 0.15))
    np.testing.assert_array_equal(positions, plan.path.positions[2:])
    loop.estop(T0 + 0.2)
    times, positions = out.trajectories[-1]
    assert times == [HOLD_TIME] and np.array_equal(positions, Q0[None, :])
    assert not out.velocities


def test_result_fields_carry_the_plan_counts() -> None:
    loop, _ = _loop()
    goal = Goal()
    stream = goal.stream(_plan(5, velocity=4.0, gripper=1.2))
    loop.start(stream, T0)
    loop.tick(T0 + 0.25)
    loop.estop(T0 + 0.25)
    fields = stream.result_fields()
    assert fields["outcome"] == Outcome.STOPPED and fields["reason"] == "e-stop"
    assert fields["points_executed"] == 2
    assert fields["points_clamped"] == 5 and fields["points_dropped_late"] == 0
    ExecuteChunk.Result(**fields)  # the message accepts every field


def test_a_stalled_loop_stops_the_stream_instead_of_chasing_rows_due_meanwhile() -> None:
    """The node's process was stopped (SIGSTOP) or starved past the watchdog period mid-chunk:
    joint states queued meanwhile arrive at once and look fresh, but the rows due during the
    stall are in the past. The loop stops (zeros) rather than command the catch-up motion."""
    for during in ("stream", "hold"):
        loop, out = _loop()
        goal = Goal()
        plan = _plan(30 if during == "stream" else 3)
        loop.start(goal.stream(plan), T0)
        ticks = 5 if during == "stream" else 32  # the 3-row chunk ends at T0 + 0.3: holding
        for k in range(1, ticks):
            loop.feed_joints(Q0, T0 + 0.01 * k)
            loop.tick(T0 + 0.01 * k)
        if during == "hold":
            assert goal.finished == [Outcome.SUCCEEDED]
        resumed = T0 + 0.01 * (ticks - 1) + (1.0 if during == "stream" else 0.3)
        loop.feed_joints(Q0, resumed)  # a queued joint state, taken just before the tick
        loop.tick(resumed)
        if during == "stream":
            assert goal.finished == [Outcome.STOPPED]
        assert np.array_equal(out.velocities[-1], np.zeros(7)), during
        assert loop.stream is None
        loop.tick(resumed + 0.01)
        assert np.array_equal(out.velocities[-1], np.zeros(7)), during


def test_a_row_due_soon_after_its_chunk_arrives_is_not_streamed_as_a_velocity_spike() -> None:
    # Plan-ahead: a chunk arrives about when its first row is due, so that row's segment lasts
    # a quarter row. The driver holds each velocity command until the next one arrives, so the
    # stream averages the planned motion over FEEDFORWARD_WINDOW_S instead of sending the
    # segment's own velocity (4x the row's).
    loop, out = _loop()
    rows = np.zeros((5, 8))
    rows[:, 0] = 0.5  # rad/s of joint 1 in every row
    schedule = schedule_rows(T0 - 0.09, 0.1, 5, T0, 0.02)  # row 0 due 10 ms after arrival
    plan = plan_joint_velocity(rows, schedule, 0.1, Q0, T0, LIMITS)
    segment_velocity = plan.path.sample(T0 + 0.001)[1][0]
    assert segment_velocity == pytest.approx(2.0)  # 0.05 rad within the quarter row
    assert loop.start(Goal().stream(plan), T0) == ""
    for k in range(10):
        t = T0 + 0.01 * k
        loop.feed_joints(plan.path.sample(t)[0], t)
        loop.tick(t)
    commanded = np.array(out.velocities)[:, 0]
    assert commanded.max() < 0.5 * segment_velocity
    # The motion itself is kept: the window's average is what the plan covers in it.
    window = plan.path.sample(T0 + FEEDFORWARD_WINDOW_S)[0][0] - Q0[0]
    assert commanded[0] == pytest.approx(window / FEEDFORWARD_WINDOW_S)


@pytest.mark.parametrize("velocity_output", [True, False])
def test_joint_states_that_jump_stop_the_arm_instead_of_driving_back(velocity_output: bool) -> None:
    # A simulator resetting its episode moves the arm outside the controller:
    # streaming or holding on toward targets planned before would drag it back there.
    loop, out = _loop(velocity_output)
    goal = Goal()
    stream = goal.stream(_plan())
    assert loop.start(stream, T0) == ""
    loop.feed_joints(Q0, T0)
    loop.tick(T0)
    elsewhere = Q0 + np.array([0.0, 0.0, 0.0, 0.6, 0.0, 0.0, 0.0])
    loop.feed_joints(elsewhere, T0 + 0.02)
    assert goal.finished == [Outcome.STOPPED]
    assert "jumped" in stream.reason and "joint 4" in stream.reason
    for k in range(1, 20):
        t = T0 + 0.02 + 0.01 * k
        loop.feed_joints(elsewhere, t)
        loop.tick(t)
    if velocity_output:
        assert all(np.array_equal(v, np.zeros(7)) for v in out.velocities[1:])
    else:
        times, positions = out.trajectories[-1]
        assert times == [HOLD_TIME] and np.array_equal(positions[0], elsewhere)


def test_motion_the_velocity_limits_allow_is_not_a_jump() -> None:
    loop, _ = _loop()
    goal = Goal()
    assert loop.start(goal.stream(_plan(n=10)), T0) == ""
    q = Q0.copy()
    for k in range(1, 20):
        # joint 1 at its velocity limit, samples 20 ms apart, plus noise within the margin
        q = q + np.array([LIMITS.joint_velocity[0] * 0.02, 0, 0, 0, 0, 0, 0])
        t = T0 + 0.02 * k
        loop.feed_joints(q + 0.9 * JOINT_JUMP_MARGIN * (k % 2), t)
        loop.tick(t)
    # Samples taken 30 ms apart but delivered together (a delayed burst): their stamps tell.
    fast = np.array([0, 0, 0, 0, LIMITS.joint_velocity[4] * 0.03, 0, 0])
    t = T0 + 0.5
    loop.feed_joints(q, t, stamp=t - 0.061)
    loop.feed_joints(q + fast, t + 0.001, stamp=t - 0.031)
    loop.feed_joints(q + 2 * fast, t + 0.002, stamp=t - 0.001)
    assert goal.finished == []
    # Without stamps the same burst is a jump.
    loop.feed_joints(q + 3 * fast, t + 0.003)
    assert goal.finished == [Outcome.STOPPED]


def test_a_chunk_planned_before_a_jump_is_not_started() -> None:
    loop, out = _loop()
    loop.feed_joints(Q0, T0)
    plan = _plan(start=T0 + 0.01)  # planned from Q0 at T0 + 0.01
    loop.feed_joints(Q0 + 0.5, T0 + 0.03)  # the robot was reset meanwhile
    problem = loop.start(Goal().stream(plan), T0 + 0.04)
    assert "jumped" in problem
    assert loop.stream is None and not out.velocities
