"""Hostile ExecuteChunk goals against the controller's logic (property-based, ``hypothesis``).

Random chunks, mostly near-valid with one or more fields broken (NaN / inf / huge values, wrong
dims, horizons and dt, negative or huge max_points, bad frames and action spaces, stamps far in
the past or future), go through ``plan_chunk`` and a ``ControlLoop`` exactly as the node does:
a rejected chunk leaves a running stream untouched and an idle arm commanded to zero; an
accepted chunk's plan and every command streamed from it are finite and within the joint,
velocity and workspace limits (the workspace never pushes the EE farther out than it was).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from frs_control.control_loop import ControlLoop, Stream
from frs_control.execution import (
    ACTION_SPACES,
    ChunkRejected,
    ChunkRequest,
    ExecutionLimits,
    JointPlan,
    plan_chunk,
)
from frs_control.kinematics import REST_QPOS, ArmKinematics

LIMITS = ExecutionLimits()
NOW = 1.7e9  # a wall-clock-sized time: float resolution matters at this magnitude
KIN = ArmKinematics()
HOME_Q = KIN.inverse(np.array([0.45, 0.0, 0.25]), np.diag([1.0, -1.0, -1.0]), REST_QPOS, 200).qpos
LOWER, UPPER = np.array(LIMITS.joint_lower), np.array(LIMITS.joint_upper)
VMAX = np.array(LIMITS.joint_velocity)
WS_LOW, WS_HIGH = np.array(LIMITS.workspace_low), np.array(LIMITS.workspace_high)

SPECIAL = [math.nan, math.inf, -math.inf, 1e300, -1e300, 1e6, 5e-324]
#: Hostile values per field; a drawn chunk is valid except in the fields the draw breaks.
HOSTILE = {
    "action_space": st.sampled_from(["", "EE_DELTA", "cartesian_pose", "\x00", "joint_velocity "]),
    "horizon": st.sampled_from([0, 1000, 1001, 2**31, 2**32 - 1]),
    "dim": st.sampled_from([0, 1, 7, 9, 32, 2**20]),
    "length": st.integers(0, 40 * 32),
    "values": st.sampled_from(SPECIAL),
    "scale": st.sampled_from([0.1, 1.0, 10.0, 1e6]),
    "dt": st.sampled_from([0.0, -0.1, math.nan, math.inf, 1e-300, 5e-324, 1e-6, 1.5, 1e9]),
    "stamp": st.sampled_from(
        [0.0, -1.0, math.inf, math.nan, NOW - 1e9, NOW - 3600, NOW - 5, NOW + 0.11, NOW + 1e9]
    ),
    "max_points": st.sampled_from([-(2**31), -1, 2**32 - 1, 10**18]),
    "frame_id": st.sampled_from(["world", "FR3_LINK0", " fr3_link0", "fr3_link0/"]),
    "normalized": st.just(True),
    "dim_names": st.lists(st.text(max_size=3), max_size=12).map(tuple),
}


@st.composite
def chunk_requests(draw: st.DrawFn) -> ChunkRequest:
    """A chunk that is valid except in the (0-3) fields the draw breaks."""
    broken = draw(st.sets(st.sampled_from(sorted(HOSTILE)), max_size=3))
    event(f"broken fields: {len(broken)}")

    def pick(name: str, valid: st.SearchStrategy) -> object:
        return draw(HOSTILE[name] if name in broken else valid)

    space = pick("action_space", st.sampled_from(["ee_delta", "joint_velocity"]))
    known = ACTION_SPACES.get(space, ACTION_SPACES["ee_delta"])
    horizon = pick("horizon", st.integers(1, 30))
    valid_dim = st.just(8) if not known.padded else st.sampled_from([8, 9, 32])
    dim = pick("dim", valid_dim)
    n = pick("length", st.just(horizon * dim if horizon * dim <= 40 * 32 else 0))
    # ee_delta: up to 2 cm and 0.02 rad per row; joint_velocity: up to 1 rad/s
    scale = pick("scale", st.sampled_from([0.0, 0.005, 0.02] if space == "ee_delta" else [1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data = rng.uniform(-scale, scale, n)
    if "values" in broken and n:
        for _ in range(draw(st.integers(1, 3))):
            data[draw(st.integers(0, n - 1))] = draw(HOSTILE["values"])
    return ChunkRequest(
        action_space=space,
        stamp=pick("stamp", st.floats(NOW - 0.05, NOW)),
        dt=pick("dt", st.floats(0.01, 0.2)),
        horizon=horizon,
        dim=dim,
        data=data,
        normalized=pick("normalized", st.just(False)),
        dim_names=pick("dim_names", st.just(())),
        max_points=pick("max_points", st.integers(0, 40)),
        frame_id=pick("frame_id", st.sampled_from(["", "fr3_link0"])),
    )


q_starts = st.one_of(
    st.just(HOME_Q),
    st.lists(st.floats(0.0, 1.0), min_size=7, max_size=7).map(
        lambda u: LOWER + np.array(u) * (UPPER - LOWER)  # anywhere in range, EE maybe outside
    ),
)


class Collected:
    """What a ControlLoop commanded."""

    def __init__(self) -> None:
        self.velocities: list[np.ndarray] = []
        self.grippers: list[float] = []

    def velocity(self, command: np.ndarray) -> None:
        self.velocities.append(np.array(command))

    def trajectory(self, times_from_now, positions) -> None:  # noqa: ANN001
        raise AssertionError("velocity output only")

    def gripper(self, value: float) -> None:
        self.grippers.append(value)


def _outside(pos: np.ndarray) -> np.ndarray:
    """How far ``pos`` lies outside the workspace box, per axis (0 inside)."""
    return np.maximum(WS_LOW - pos, 0.0) + np.maximum(pos - WS_HIGH, 0.0)


def _check_plan(plan: JointPlan, q_start: np.ndarray, request: ChunkRequest) -> None:
    knots, times = plan.path.positions, plan.path.times
    assert np.all(np.isfinite(knots)) and np.all(np.isfinite(times))
    assert np.all(np.diff(times) > 0.0)
    inside = knots[1:]
    assert np.all(inside >= np.minimum(LOWER, q_start) - 1e-9)
    assert np.all(inside <= np.maximum(UPPER, q_start) + 1e-9)
    speeds = np.abs(np.diff(knots, axis=0)) / np.diff(times)[:, None]
    assert np.all(speeds <= VMAX * (1 + 1e-9) + 1e-9)
    assert np.all((plan.gripper >= 0.0) & (plan.gripper <= 1.0))
    if plan.ee_goals is not None:
        start = KIN.forward(q_start)[0]
        goals = np.vstack([start, plan.ee_goals])
        assert np.all(np.isfinite(goals))
        # The box never pulls the EE farther out, nor further than the rows ask.
        assert np.all(_outside(goals[1:]) <= _outside(start) + 1e-9)
        rows = np.asarray(request.data).reshape(request.horizon, request.dim)
        asked = np.abs(rows[plan.points_dropped_late : plan.points_dropped_late + len(goals) - 1])
        assert np.all(np.abs(np.diff(goals, axis=0)) <= asked[:, 0:3] + 1e-9)


def _stream(plan: JointPlan) -> Stream:
    return Stream(plan, lambda: False, lambda _done, _total: None, lambda _stream: None)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(request=chunk_requests(), q_start=q_starts)
# Found by this test: rows closer than the clock's resolution gave equal knot times and a
# ValueError from JointPath instead of a rejection (now: dt below ExecutionLimits.min_dt).
@example(ChunkRequest("joint_velocity", NOW - 1e-3, 5e-324, 5, 8, np.zeros(40)), HOME_Q)
@example(ChunkRequest("ee_delta", NOW - 1e-3, 1e-6, 5, 8, np.zeros(40)), HOME_Q)
def test_hostile_chunks_are_rejected_untouched_or_executed_within_limits(
    request: ChunkRequest, q_start: np.ndarray
) -> None:
    out = Collected()
    loop = _loop_at(out, q_start)
    running = plan_chunk(_valid_request(), NOW, q_start, KIN, LIMITS)
    assert loop.start(_stream(running), NOW) == ""
    try:
        plan = plan_chunk(request, NOW, q_start, KIN, LIMITS)
    except ChunkRejected as err:
        event("rejected")
        assert str(err)
        # Rejected: the running stream goes on untouched; once it ends, the arm is commanded
        # to zero (nothing of the rejected chunk ever runs).
        assert loop.stream is not None and loop.stream.plan is running
        for t in np.arange(NOW, running.end_time + loop.chunk_timeout + 0.2, 0.01):
            loop.tick(t)
        assert loop.stream is None and np.all(out.velocities[-1] == 0.0)
        assert np.all(np.isfinite(out.velocities)) and np.all(np.abs(out.velocities) <= VMAX)
        return
    event(f"accepted: {request.action_space}, {plan.points_clamped > 0 and 'clamped' or 'exact'}")
    _check_plan(plan, q_start, request)
    assert loop.start(_stream(plan), NOW) == ""
    assert loop.stream.plan is plan
    # Stream it twice: tracking perfectly, and against an arm that does not move at all.
    for tracking in (True, False):
        out.velocities.clear()
        if not tracking:  # a fresh loop: time and the arm start over
            loop = _loop_at(out, q_start)
            assert loop.start(_stream(plan), NOW) == ""
        step = max(0.01, (plan.end_time - NOW) / 300)  # the time a long plan takes to check
        for t in np.arange(NOW, plan.end_time + 0.05, step):
            if tracking:
                loop.feed_joints(plan.path.sample(t)[0], t)
            loop.tick(t)
        commands = np.array(out.velocities)
        assert len(commands) and np.all(np.isfinite(commands))
        assert np.all(np.abs(commands) <= VMAX)
        assert all(0.0 <= g <= 1.0 for g in out.grippers)


def _loop_at(out: Collected, q_start: np.ndarray) -> ControlLoop:
    """An active velocity-output loop that has measured ``q_start`` at ``NOW``."""
    loop = ControlLoop(
        out, LIMITS, logging.getLogger("hostile"), velocity_output=True, watchdog_period=10.0
    )
    loop.activate()
    loop.feed_joints(q_start, NOW)
    return loop


def _valid_request() -> ChunkRequest:
    rows = np.zeros((5, 8))
    rows[:, 0] = 0.2  # joint 1 at 0.2 rad/s
    return ChunkRequest("joint_velocity", NOW - 0.01, 0.1, 5, 8, rows.reshape(-1))
