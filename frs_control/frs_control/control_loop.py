"""The arm controller's state machine without ROS: streaming, holding, stopping, e-stop, watchdog.

The node owns ROS (parameters, QoS, topics, the action server, the timer) and calls into one
:class:`ControlLoop` from its callbacks; what to command goes out through :class:`Outputs`, which
the node implements with publishers. Every public method takes the loop's lock, so callbacks may
run on any thread.

Outcomes of a stream: SUCCEEDED when the last row's time has passed; PREEMPTED when a newer valid
chunk replaces it; CANCELED on cancel; STOPPED on watchdog (stale joint states), a stalled loop
(no tick for longer than the watchdog period: the process was stopped or starved, the robot's
command timeout has already held the arm, and the rows due meanwhile are in the past; resuming
would chase them), joint states that jump (the robot was reset or moved outside the controller),
e-stop, deactivation or shutdown. Stopping means zero velocities at once
(then repeated at a low rate while standing still) on the ``forward_velocity`` output, or one
hold-at-measured-position point on the ``joint_trajectory`` output.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import numpy as np

from frs_control.execution import ExecutionLimits, JointPlan, Watchdog, velocity_command

HOLD_TIME = 0.05  # s; time_from_start of a hold-at-measured-position trajectory point
STANDSTILL_PERIOD = 0.1  # s between repeated zero-velocity commands while standing still
#: s over which the velocity output's feedforward averages the planned motion. A velocity
#: command is held until the next one arrives (ros2_control, the robot's driver): the plan's
#: velocity at one instant can be a spike (a row due soon after its chunk arrives must be
#: reached within a quarter row), and a spike held through one late message overshoots.
FEEDFORWARD_WINDOW_S = 0.1
#: rad a joint may move between two joint_states beyond what its velocity limit allows in the
#: time between them (delivery jitter, noise). A larger jump means the robot was moved or reset
#: outside this controller (a simulator's episode reset, a second source on joint_states):
#: targets planned before it lead somewhere nobody asked for, so the arm is stopped.
JOINT_JUMP_MARGIN = 0.1


class Outcome(IntEnum):
    """``frs_msgs/action/ExecuteChunk`` result outcomes (same values as the message constants)."""

    SUCCEEDED = 0
    REJECTED = 1
    CANCELED = 2
    PREEMPTED = 3
    STOPPED = 4


class Outputs(Protocol):
    """Where the loop's commands go (the node's publishers)."""

    def velocity(self, command: np.ndarray) -> None:
        """(7,) joint velocities, rad/s (``forward_velocity`` output)."""

    def trajectory(self, times_from_now: Sequence[float], positions: np.ndarray) -> None:
        """Joint-position knots (k, 7) at seconds from now (``joint_trajectory`` output)."""

    def gripper(self, value: float) -> None:
        """Gripper command in [0, 1] (0 = open)."""


class Log(Protocol):
    """The logging calls the loop makes (an rclpy logger or a ``logging.Logger``)."""

    def info(self, message: str) -> None: ...

    def error(self, message: str) -> None: ...


@dataclass
class Stream:
    """One accepted chunk being streamed; finished exactly once (under the loop's lock)."""

    plan: JointPlan
    cancel_requested: Callable[[], bool]
    publish_feedback: Callable[[int, int], None]  # (points_executed, points_total)
    on_finish: Callable[[Stream], None]  # e.g. wake the goal's coroutine
    outcome: Outcome = Outcome.SUCCEEDED
    reason: str = ""
    points_executed: int = 0
    last_feedback: int = -1
    finished: bool = False

    def finish(self, outcome: Outcome, reason: str, now: float) -> None:
        """Record how the stream ended and tell its owner."""
        self.outcome, self.reason, self.finished = outcome, reason, True
        self.points_executed = self.plan.rows_done(now)
        self.on_finish(self)

    def result_fields(self) -> dict[str, int | str]:
        """The fields of an ``ExecuteChunk.Result`` for this stream."""
        return {
            "outcome": int(self.outcome),
            "reason": self.reason,
            "points_executed": self.points_executed,
            "points_dropped_late": self.plan.points_dropped_late,
            "points_clamped": self.plan.points_clamped,
        }


class ControlLoop:
    """Joint state, the running stream, hold-after-chunk, e-stop and lifecycle state of the arm."""

    def __init__(
        self,
        outputs: Outputs,
        limits: ExecutionLimits,
        log: Log,
        *,
        velocity_output: bool,
        watchdog_period: float,
        position_gain: float = 5.0,
        chunk_timeout: float = 0.5,
    ) -> None:
        self.outputs, self.limits, self.log = outputs, limits, log
        self.velocity_output = velocity_output  # False: joint_trajectory output
        self.watchdog = Watchdog(watchdog_period)
        self.position_gain = position_gain  # 1/s, on top of feedforward (dynamic)
        self.chunk_timeout = chunk_timeout  # s holding after a chunk's end (dynamic)
        self.lock = threading.Lock()
        self.active = False
        self.estopped = False
        self.q: np.ndarray | None = None
        self.stream: Stream | None = None
        self._hold: tuple[np.ndarray, float] | None = None  # (target, until) after a chunk
        self._stop_sent = True  # a stop/hold command for the current standstill is out
        self._last_zero_sent = -math.inf
        self._states_fresh = False  # joint states were fresh at the last tick
        self._last_tick: float | None = None
        self._last_jump = -math.inf  # when joint_states last jumped
        self._last_stamp: float | None = None  # header stamp of the last joint_states

    # ------------------------------------------------------------------ inputs
    def feed_joints(self, q: np.ndarray, now: float, stamp: float | None = None) -> None:
        """A measured (7,) finite joint position vector, received at ``now``, sampled at
        ``stamp`` (the message's header stamp, where it has one)."""
        q = np.asarray(q, dtype=np.float64)
        with self.lock:
            jump = self._jump_reason(q, now, stamp)
            self.q, self._last_stamp = q, stamp
            self.watchdog.feed(now)
            if jump:
                self._last_jump = now
                if self.stream is not None or self._hold is not None:
                    self.log.error(f"{jump}: stopping")
                    self._halt(now, jump)

    def _jump_reason(self, q: np.ndarray, now: float, stamp: float | None) -> str:
        """Why ``q`` cannot have followed from the previous sample by motion ('' if it can).

        The time between the samples is the longer of the receive and the stamp difference:
        samples delayed and then delivered together (or some of them lost) arrive closer
        together than they were taken. A stamp difference counts up to the watchdog period.
        """
        if self.q is None or self.watchdog.last_feed is None:
            return ""
        elapsed = max(0.0, now - self.watchdog.last_feed)
        if stamp is not None and self._last_stamp is not None:
            sampled = stamp - self._last_stamp
            if math.isfinite(sampled):
                elapsed = max(elapsed, min(sampled, self.watchdog.period))
        allowed = np.asarray(self.limits.joint_velocity) * elapsed + JOINT_JUMP_MARGIN
        jump = np.abs(q - self.q)
        if np.all(jump <= allowed):
            return ""
        joint = int(np.argmax(jump - allowed))
        return (
            f"joint_states jumped: joint {joint + 1} moved {jump[joint]:.2f} rad in "
            f"{elapsed:.3f} s (the robot was moved or reset outside this controller)"
        )

    def activate(self) -> None:
        """Start accepting chunks (lifecycle activate)."""
        with self.lock:
            self.active, self._stop_sent, self._last_tick = True, False, None

    def deactivate(self, now: float, reason: str = "controller deactivated") -> None:
        """Stop motion (running stream -> STOPPED) and refuse chunks."""
        with self.lock:
            self._halt(now, reason)
            self.active = False

    def final_stop(self, now: float) -> None:
        """One last stop command before the process exits, even if one was sent already."""
        with self.lock:
            self._stop_sent = False
            self._halt(now, "controller shutting down")

    def estop(self, now: float) -> None:
        """Stop at once and refuse chunks until :meth:`reset_estop`."""
        with self.lock:
            self.estopped = True
            self._halt(now, "e-stop")

    def reset_estop(self) -> bool:
        """Accept chunks again; whether the e-stop was engaged."""
        with self.lock:
            was, self.estopped = self.estopped, False
        return was

    # ------------------------------------------------------------------ chunks
    def start_state(self, now: float) -> tuple[np.ndarray | None, str]:
        """(measured q to plan from, '') or (None, why no chunk may start now)."""
        with self.lock:
            problem = self._not_ready_reason(now)
            return (None, problem) if problem else (self.q.copy(), "")

    def start(self, stream: Stream, now: float) -> str:
        """Make ``stream`` the running one (preempting any other); '' or why it may not start.

        Call with a plan made outside the lock: a rejected chunk never touches the running one.
        """
        with self.lock:
            problem = self._not_ready_reason(now)  # e-stop may have come meanwhile
            if problem:
                return problem
            if self._last_jump >= stream.plan.path.times[0]:
                return "joint_states jumped while the chunk was planned; plan it again"
            if self.stream is not None:
                self.stream.finish(Outcome.PREEMPTED, "preempted by a newer chunk", now)
            self.stream, self._hold, self._stop_sent = stream, None, False
            if not self.velocity_output:
                times = stream.plan.path.times[1:] - now
                keep = times > 0.0
                if np.any(keep):
                    self.outputs.trajectory(
                        times[keep].tolist(), stream.plan.path.positions[1:][keep]
                    )
            return ""

    def _not_ready_reason(self, now: float) -> str:
        if not self.active:
            return "controller is not active (lifecycle state)"
        if self.estopped:
            return "e-stop engaged; call frs/reset_estop"
        if self.q is None:
            return "no joint_states received yet"
        if self.watchdog.is_stale(now):
            return f"joint_states stale ({self.watchdog.age(now):.2f} s old)"
        return ""

    # ------------------------------------------------------------------ control tick
    def tick(self, now: float) -> None:
        """One control period: stream, hold, or stop (watchdog, e-stop, idle, chunk timeout)."""
        with self.lock:
            if not self.active:
                return
            gap = 0.0 if self._last_tick is None else now - self._last_tick
            self._last_tick = now
            if self.estopped:
                self._halt(now, "e-stop")
            elif gap > self.watchdog.period and (self.stream is not None or self._hold is not None):
                # Checked before the watchdog: joint states queued during the stall may have
                # just been taken as fresh; the rows due meanwhile must not be chased.
                period = self.watchdog.period
                reason = f"control loop stalled {gap:.2f} s (> watchdog_period {period} s)"
                self.log.error(f"{reason}: stopping; rows due meanwhile are not executed")
                self._halt(now, reason)
            elif self.watchdog.is_stale(now):
                age = self.watchdog.age(now)
                reason = f"watchdog: joint_states stale ({age:.2f} s > {self.watchdog.period} s)"
                if self._states_fresh:
                    self.log.error(f"{reason}: stopping")
                self._states_fresh = False
                self._halt(now, reason)
            elif self.stream is not None:
                self._stream_tick(self.stream, now)
            elif self._hold is not None:
                target, until = self._hold
                if now > until:
                    self.log.info("no new chunk within chunk_timeout: stopped")
                    self._halt(now, "chunk timeout")
                elif self.velocity_output:
                    self._command_velocity(target, np.zeros(len(target)))
            else:
                self._halt(now, "idle")
            self._states_fresh = not self.watchdog.is_stale(now)

    def _stream_tick(self, stream: Stream, now: float) -> None:
        """Command the interpolated target, the row's gripper, feedback; finish at the end."""
        plan = stream.plan
        if stream.cancel_requested():
            self._halt(now, "canceled", Outcome.CANCELED)
            return
        if self.velocity_output:
            target, _ = plan.path.sample(now)
            ahead, _ = plan.path.sample(now + FEEDFORWARD_WINDOW_S)
            self._command_velocity(target, (ahead - target) / FEEDFORWARD_WINDOW_S)
        self.outputs.gripper(plan.gripper_at(now))
        done = plan.rows_done(now)
        if done != stream.last_feedback:
            stream.last_feedback = done
            stream.publish_feedback(done, len(plan.row_times))
        if now >= plan.end_time:
            stream.finish(Outcome.SUCCEEDED, "", now)
            self.stream = None
            self._hold = (plan.path.positions[-1], now + self.chunk_timeout)

    def _halt(self, now: float, reason: str, outcome: Outcome = Outcome.STOPPED) -> None:
        """Stop safely: end the running stream, zero velocities / hold at the measured position."""
        if self.stream is not None:
            self.stream.finish(outcome, reason, now)
            self.stream = None
        self._hold = None
        if self.velocity_output:
            # Zeros at once, then repeated at a low rate while standing still (cheap keep-alive).
            if not self._stop_sent or now - self._last_zero_sent >= STANDSTILL_PERIOD:
                self.outputs.velocity(np.zeros(7))
                self._last_zero_sent = now
        elif not self._stop_sent and self.q is not None:
            self.outputs.trajectory([HOLD_TIME], self.q[None, :].copy())
        self._stop_sent = True

    def _command_velocity(self, target: np.ndarray, feedforward: np.ndarray) -> None:
        if self.q is None:
            return
        command = velocity_command(target, feedforward, self.q, self.position_gain, self.limits)
        self.outputs.velocity(command)
