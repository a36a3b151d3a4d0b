"""From an action chunk to a timed, limit-checked joint-space plan (no ROS; arm controller core).

The arm controller node only translates ROS messages into these calls (:func:`plan_chunk` runs
steps 1-3):

1. ``validate_chunk`` checks a chunk's structure and the rows that will run against hard limits
   and *rejects* it (``ChunkRejected`` with a reason) when it cannot be made safe: a malformed,
   non-finite or absurd chunk moves nothing.
2. ``schedule_rows`` timestamps rows from the chunk's OBSERVATION stamp (row i executes at
   ``stamp + (i + 1) * dt``), keeps the ``max_points`` prefix and drops rows already in the past
   (the diffusion_policy real-robot rule).
3. ``plan_ee_delta`` / ``plan_joint_velocity`` turn the kept rows into joint-position knots, clamped
   to workspace, joint-position and joint-velocity limits, gripper commands clipped into [0, 1]
   (counting altered rows in ``points_clamped``).
4. ``JointPlan.sample`` / ``velocity_command`` give the interpolated target and the clamped
   velocity command at any control tick; ``Watchdog`` tracks the age of joint states.

Row layouts (columns of one row; SI units, REP-103, base frame ``fr3_link0``):

- ``ee_delta``, exactly 8 columns: ``dx, dy, dz`` (m per row), ``droll, dpitch, dyaw`` (rad per
  row, axis-angle), ``gripper`` (0 = open .. 1 = closed), one ignored pad column.
- ``joint_velocity`` (DROID / pi0.5 style, e.g. dt = 1/15 s), 8 or more columns: ``v1 .. v7``
  (rad/s of joint1..7, held over the row's dt), ``gripper`` (position, 0 = open .. 1 = closed);
  columns from 8 on (a policy's padding, e.g. pi0.5's 32-wide rows) are ignored.

Only the rows that will run (the ``max_points`` prefix) and the columns read are value-checked.
Times are seconds on one clock (the node uses ROS time = wall clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from frs_control.kinematics import IKResult, axis_angle_to_matrix

N_JOINTS = 7


@dataclass(frozen=True)
class ActionSpace:
    """How the controller reads the rows of one action space."""

    dim: int  # columns read
    gripper_column: int
    padded: bool  # wider rows are accepted; the extra columns are ignored


#: Action spaces the controller executes (row layouts in the module docstring).
ACTION_SPACES: dict[str, ActionSpace] = {
    "ee_delta": ActionSpace(dim=8, gripper_column=6, padded=False),
    "joint_velocity": ActionSpace(dim=8, gripper_column=7, padded=True),
}

#: FR3 joint limits (franka_description), radians and rad/s.
FR3_JOINT_LOWER = (-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159)
FR3_JOINT_UPPER = (2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159)
FR3_JOINT_VELOCITY = (2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26)

_IK_POS_TOL = 0.005  # m; larger IK residuals mean a limit bound the row (counted as clamped)
_IK_ROT_TOL = 0.05  # rad


class ChunkRejected(ValueError):
    """The chunk violates a hard limit or the timing contract; ``str(err)`` is the reason."""


@dataclass(frozen=True)
class ExecutionLimits:
    """Hard (reject) and soft (clamp) limits applied to every chunk. SI units."""

    joint_lower: tuple[float, ...] = FR3_JOINT_LOWER
    joint_upper: tuple[float, ...] = FR3_JOINT_UPPER
    joint_velocity: tuple[float, ...] = FR3_JOINT_VELOCITY  # clamp, rad/s
    workspace_low: tuple[float, float, float] = (0.2, -0.45, 0.045)  # EE goal clip box, m
    workspace_high: tuple[float, float, float] = (0.8, 0.45, 0.5)
    max_row_translation: float = 0.1  # m per row; larger rows are rejected
    max_row_rotation: float = 0.5  # rad per row; larger rows are rejected
    max_ee_speed: float = 1.0  # m/s (row translation / dt); faster rows are rejected
    reject_velocity_factor: float = 2.0  # joint_velocity rows above factor * limit are rejected
    min_dt: float = 1e-3  # s; shorter rows cannot be timed (knots closer than clock resolution)
    max_dt: float = 1.0  # s
    max_horizon: int = 1000
    future_tolerance: float = 0.1  # s an observation stamp may lie ahead of our clock
    late_tolerance: float = 0.02  # s a row may be past due and still be executed


@dataclass(frozen=True)
class ChunkRequest:
    """The fields of an ``frs_msgs/ActionChunk`` (+ ``max_points``) the controller needs."""

    action_space: str
    stamp: float  # observation time, s
    dt: float  # s between rows
    horizon: int
    dim: int
    data: np.ndarray  # flat, row-major, len == horizon * dim
    normalized: bool = False
    dim_names: tuple[str, ...] = ()
    max_points: int = 0  # 0 = all rows
    frame_id: str = ""

    @property
    def executed_rows(self) -> int:
        """How many leading rows can run (the ``max_points`` prefix)."""
        return self.horizon if self.max_points <= 0 else min(self.horizon, self.max_points)


def validate_chunk(request: ChunkRequest, now: float, limits: ExecutionLimits) -> np.ndarray:
    """The ``(executed_rows, columns read)`` rows, or ``ChunkRejected`` naming the first problem.

    Structure (sizes, dt, stamp) is checked on the whole chunk; values (finite, hard limits) only
    on the rows that will run and the columns read. Gripper values are clipped later, not checked.
    """
    name = request.action_space
    space = ACTION_SPACES.get(name)
    if space is None:
        raise ChunkRejected(
            f"unknown action_space {name!r}; expected one of {sorted(ACTION_SPACES)}"
        )
    if request.normalized:
        raise ChunkRejected("chunk is in normalized policy space; the controller needs real units")
    if request.dim != space.dim and not (space.padded and request.dim > space.dim):
        wanted = f"at least {space.dim}" if space.padded else str(space.dim)
        raise ChunkRejected(f"{name} needs dim {wanted}, got {request.dim}")
    if not 0 < request.horizon <= limits.max_horizon:
        raise ChunkRejected(f"horizon must be in 1..{limits.max_horizon}, got {request.horizon}")
    data = np.asarray(request.data, dtype=np.float64).reshape(-1)
    if data.size != request.horizon * request.dim:
        raise ChunkRejected(
            f"len(data) = {data.size} != horizon * dim = {request.horizon} * {request.dim}"
        )
    if request.dim_names and len(request.dim_names) != request.dim:
        raise ChunkRejected(f"{len(request.dim_names)} dim_names for dim {request.dim}")
    if not (np.isfinite(request.dt) and limits.min_dt <= request.dt <= limits.max_dt):
        raise ChunkRejected(f"dt must be in [{limits.min_dt}, {limits.max_dt}] s, got {request.dt}")
    if request.stamp <= 0.0:
        raise ChunkRejected("header.stamp is unset; it must be the observation time")
    ahead = request.stamp - now
    if ahead > limits.future_tolerance:
        raise ChunkRejected(f"header.stamp is {ahead:.3f} s in the future")
    rows = data.reshape(request.horizon, request.dim)[: request.executed_rows, : space.dim]
    if not np.all(np.isfinite(rows)):
        raise ChunkRejected("data contains NaN or inf")
    if name == "ee_delta":
        _check_ee_rows(rows, request.dt, limits)
    else:
        _check_velocity_rows(rows, limits)
    return rows


def _check_ee_rows(rows: np.ndarray, dt: float, limits: ExecutionLimits) -> None:
    with np.errstate(over="ignore"):  # a norm of huge values overflows to inf: rejected below
        trans = np.linalg.norm(rows[:, 0:3], axis=1)
        rot = np.linalg.norm(rows[:, 3:6], axis=1)
    max_trans = min(limits.max_row_translation, limits.max_ee_speed * dt)
    if np.any(trans > max_trans):
        i = int(np.argmax(trans))
        raise ChunkRejected(
            f"row {i}: translation {trans[i]:.3f} m exceeds {max_trans:.3f} m per row "
            f"(limits {limits.max_row_translation} m, {limits.max_ee_speed} m/s)"
        )
    if np.any(rot > limits.max_row_rotation):
        i = int(np.argmax(rot))
        raise ChunkRejected(
            f"row {i}: rotation {rot[i]:.3f} rad exceeds {limits.max_row_rotation} rad per row"
        )


def _check_velocity_rows(rows: np.ndarray, limits: ExecutionLimits) -> None:
    hard = limits.reject_velocity_factor * np.asarray(limits.joint_velocity)
    over = np.abs(rows[:, :N_JOINTS]) > hard
    if np.any(over):
        i, j = (int(v) for v in np.argwhere(over)[0])
        raise ChunkRejected(
            f"row {i}: joint {j + 1} velocity {rows[i, j]:.3f} rad/s exceeds {hard[j]:.3f}"
        )


@dataclass(frozen=True)
class RowSchedule:
    """Which rows of a chunk run, and when."""

    indices: np.ndarray  # row indices into the chunk, ascending
    times: np.ndarray  # execution time of each kept row, s
    dropped_late: int  # rows of the max_points prefix whose time had already passed


def schedule_rows(
    stamp: float,
    dt: float,
    horizon: int,
    now: float,
    late_tolerance: float,
    max_points: int = 0,
) -> RowSchedule:
    """Row i runs at ``stamp + (i + 1) * dt``; keep the prefix, drop rows late beyond tolerance.

    Raises ``ChunkRejected`` when every row of the prefix is already in the past (stale chunk).
    """
    n = horizon if max_points <= 0 else min(horizon, max_points)
    times = stamp + dt * np.arange(1, n + 1)
    on_time = times >= now - late_tolerance
    if not np.any(on_time):
        raise ChunkRejected(
            f"stale chunk: its last executed row was due {now - times[-1]:.3f} s ago"
        )
    first = int(np.argmax(on_time))  # times ascend, so late rows form a prefix
    return RowSchedule(np.arange(first, n), times[first:], dropped_late=first)


class Kinematics(Protocol):
    """What planning needs from the arm model (``kinematics.ArmKinematics`` provides it)."""

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def inverse(
        self, goal_pos: np.ndarray, goal_rot: np.ndarray, q_init: np.ndarray, max_iters: int = 10
    ) -> IKResult: ...


@dataclass
class JointPath:
    """Piecewise-linear joint positions through timed knots; held constant outside them."""

    times: np.ndarray  # (k,) strictly ascending, s
    positions: np.ndarray  # (k, n) rad

    def __post_init__(self) -> None:
        self.times = np.asarray(self.times, dtype=np.float64)
        self.positions = np.atleast_2d(np.asarray(self.positions, dtype=np.float64))
        if self.times.ndim != 1 or len(self.times) != len(self.positions) or not len(self.times):
            raise ValueError("a path needs one time per knot and at least one knot")
        if np.any(np.diff(self.times) <= 0.0):
            raise ValueError("knot times must be strictly ascending")

    @property
    def end_time(self) -> float:
        """Time of the last knot."""
        return float(self.times[-1])

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated position and the segment's velocity (zero outside the knots) at ``t``."""
        times, pos = self.times, self.positions
        if t <= times[0]:
            return pos[0].copy(), np.zeros(pos.shape[1])
        if t >= times[-1]:
            return pos[-1].copy(), np.zeros(pos.shape[1])
        k = int(np.searchsorted(times, t, side="right"))  # times[k-1] <= t < times[k]
        span = times[k] - times[k - 1]
        velocity = (pos[k] - pos[k - 1]) / span
        return pos[k - 1] + velocity * (t - times[k - 1]), velocity


@dataclass
class JointPlan:
    """A chunk ready to stream: joint path (first knot = start state), per-row gripper, counts."""

    path: JointPath
    row_times: np.ndarray  # (n,) execution time of each planned row (path.times[1:])
    gripper: np.ndarray  # (n,) gripper command of each row, [0, 1]
    points_clamped: int
    points_dropped_late: int
    ee_goals: np.ndarray | None = None  # (n, 3) EE goal positions for ee_delta plans, m
    notes: list[str] = field(default_factory=list)

    @property
    def end_time(self) -> float:
        """When the last row is due."""
        return self.path.end_time

    def rows_done(self, t: float) -> int:
        """Rows whose execution time has passed at ``t``."""
        return int(np.searchsorted(self.row_times, t, side="right"))

    def gripper_at(self, t: float) -> float:
        """Gripper command of the row being executed at ``t`` (the last row's after the end)."""
        k = min(int(np.searchsorted(self.row_times, t, side="left")), len(self.gripper) - 1)
        return float(self.gripper[k])


def clamp_joint_step(
    q_prev: np.ndarray, q_next: np.ndarray, duration: float, limits: ExecutionLimits
) -> tuple[np.ndarray, bool]:
    """Clamp ``q_next`` to the joint range and to velocity limits over ``duration``."""
    lower, upper = np.asarray(limits.joint_lower), np.asarray(limits.joint_upper)
    max_step = np.asarray(limits.joint_velocity) * duration
    q = np.clip(q_next, lower, upper)
    q = np.clip(q, q_prev - max_step, q_prev + max_step)
    return q, bool(np.any(np.abs(q - q_next) > 1e-9))


def clip_gripper(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gripper commands clipped into [0, 1] (the hardware range) and which rows were clipped."""
    values = np.asarray(values, dtype=np.float64)
    clipped = np.clip(values, 0.0, 1.0)
    return clipped, clipped != values


def workspace_step(
    position: np.ndarray, delta: np.ndarray, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """The part of the translation ``delta`` from ``position`` that the workspace box allows.

    Per axis, the step keeps the sign of the commanded one and is never longer: inside the box
    it is the usual clip at the walls; outside it, a move back toward the box runs as commanded
    (stopping at the far wall), while "stay" stays and a move further out is stopped where it
    is. Clipping the goal itself instead would turn "stay" outside the box into a jump to the
    wall (issue 14: a zero chunk moved a joint at its 5.26 rad/s limit).
    """
    delta = np.asarray(delta, dtype=np.float64)
    step = np.clip(position + delta, low, high) - position
    return np.clip(step, np.minimum(delta, 0.0), np.maximum(delta, 0.0))


def _knot_times(schedule: RowSchedule, start_time: float, dt: float) -> np.ndarray:
    """Row times, pushed so every segment lasts at least a quarter row (tolerated-late rows)."""
    times = np.empty(len(schedule.times))
    prev = start_time
    for i, t in enumerate(schedule.times):
        prev = times[i] = max(float(t), prev + 0.25 * dt)
    return times


def plan_ee_delta(
    rows: np.ndarray,
    schedule: RowSchedule,
    dt: float,
    q_start: np.ndarray,
    start_time: float,
    kinematics: Kinematics,
    limits: ExecutionLimits,
    ik_iterations: int = 20,
) -> JointPlan:
    """Goal pose = measured EE pose at ``start_time`` + accumulated deltas of the kept rows.

    Dropped (late) rows are not accumulated: their time is gone and the measured start pose
    already shows what happened meanwhile. Each row's translation is limited by the workspace
    box (:func:`workspace_step`: never more motion than the row asks), the goal solved with DLS
    IK seeded by the previous row, then clamped to joint position / velocity limits.
    """
    q_prev = np.asarray(q_start, dtype=np.float64)
    goal_pos, goal_rot = kinematics.forward(q_prev)
    ws_low, ws_high = np.asarray(limits.workspace_low), np.asarray(limits.workspace_high)
    times = _knot_times(schedule, start_time, dt)
    gripper, gripper_clipped = clip_gripper(
        rows[schedule.indices, ACTION_SPACES["ee_delta"].gripper_column]
    )
    knots, goals, clamped, t_prev = [q_prev], [], 0, start_time
    for row, t, clipped in zip(rows[schedule.indices], times, gripper_clipped, strict=True):
        step = workspace_step(goal_pos, row[0:3], ws_low, ws_high)
        goal_pos = goal_pos + step
        altered = bool(clipped) or bool(np.any(np.abs(step - row[0:3]) > 1e-9))
        goal_rot = axis_angle_to_matrix(row[3:6]) @ goal_rot
        ik = kinematics.inverse(goal_pos, goal_rot, q_prev, max_iters=ik_iterations)
        altered |= ik.pos_error > _IK_POS_TOL or ik.rot_error > _IK_ROT_TOL
        q, limited = clamp_joint_step(q_prev, ik.qpos, t - t_prev, limits)
        clamped += altered or limited
        knots.append(q)
        goals.append(goal_pos)
        q_prev, t_prev = q, t
    return JointPlan(
        path=JointPath(np.concatenate([[start_time], times]), np.array(knots)),
        row_times=times,
        gripper=gripper,
        points_clamped=int(clamped),
        points_dropped_late=schedule.dropped_late,
        ee_goals=np.array(goals),
    )


def plan_joint_velocity(
    rows: np.ndarray,
    schedule: RowSchedule,
    dt: float,
    q_start: np.ndarray,
    start_time: float,
    limits: ExecutionLimits,
) -> JointPlan:
    """Integrate each kept row's joint velocities over ``dt`` from the measured start position."""
    q_prev = np.asarray(q_start, dtype=np.float64)
    times = _knot_times(schedule, start_time, dt)
    gripper, gripper_clipped = clip_gripper(
        rows[schedule.indices, ACTION_SPACES["joint_velocity"].gripper_column]
    )
    knots, clamped, t_prev = [q_prev], 0, start_time
    for row, t, clipped in zip(rows[schedule.indices], times, gripper_clipped, strict=True):
        q, limited = clamp_joint_step(q_prev, q_prev + row[:N_JOINTS] * dt, t - t_prev, limits)
        clamped += bool(clipped) or limited
        knots.append(q)
        q_prev, t_prev = q, t
    return JointPlan(
        path=JointPath(np.concatenate([[start_time], times]), np.array(knots)),
        row_times=times,
        gripper=gripper,
        points_clamped=int(clamped),
        points_dropped_late=schedule.dropped_late,
    )


def plan_chunk(
    request: ChunkRequest,
    now: float,
    q_start: np.ndarray,
    kinematics: Kinematics,
    limits: ExecutionLimits,
    *,
    base_frame: str = "fr3_link0",
    ik_iterations: int = 20,
) -> JointPlan:
    """Validate, schedule and plan a chunk starting from ``q_start`` measured at ``now``.

    Raises ``ChunkRejected`` (nothing may move) for a chunk that cannot be made safe; a chunk
    must name ``base_frame`` or leave ``frame_id`` empty, whatever its action space (a joint
    chunk naming another frame comes from a confused client).
    """
    if request.frame_id not in ("", base_frame):
        raise ChunkRejected(
            f"{request.action_space} chunk in frame {request.frame_id!r}; expected "
            f"{base_frame!r} or none"
        )
    rows = validate_chunk(request, now, limits)
    schedule = schedule_rows(
        request.stamp, request.dt, request.horizon, now, limits.late_tolerance, request.max_points
    )
    if request.action_space == "ee_delta":
        return plan_ee_delta(
            rows, schedule, request.dt, q_start, now, kinematics, limits, ik_iterations
        )
    return plan_joint_velocity(rows, schedule, request.dt, q_start, now, limits)


def velocity_command(
    target: np.ndarray,
    feedforward: np.ndarray,
    measured: np.ndarray,
    gain: float,
    limits: ExecutionLimits,
) -> np.ndarray:
    """Joint velocity command: feedforward + P-correction toward the target, clamped to limits."""
    vmax = np.asarray(limits.joint_velocity)
    command = np.asarray(feedforward) + gain * (np.asarray(target) - np.asarray(measured))
    return np.clip(command, -vmax, vmax)


@dataclass
class Watchdog:
    """Tracks when the last joint state arrived; stale after ``period`` seconds without one."""

    period: float
    last_feed: float | None = None

    def feed(self, t: float) -> None:
        """Record a fresh input at time ``t``."""
        self.last_feed = t

    def age(self, t: float) -> float:
        """Seconds since the last input (inf before the first)."""
        return np.inf if self.last_feed is None else t - self.last_feed

    def is_stale(self, t: float) -> bool:
        """Whether the input is older than the period (or never arrived)."""
        return self.age(t) > self.period
