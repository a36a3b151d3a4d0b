"""Arm controller node: executes action chunks on the arm, safely.

A lifecycle node (``arm_controller``): ``on_configure`` loads the kinematics and creates the ROS
interfaces, ``on_activate`` starts the control loop, ``on_deactivate`` stops motion. With
``autostart`` (default) it configures and activates itself, since ``ros2 lifecycle`` and launch's
lifecycle manager are not available everywhere.

It serves ``frs/execute_chunk`` (frs_msgs/action/ExecuteChunk). The logic (validation, row timing,
late-row dropping, limit clamping, watchdog) lives in ``frs_control.execution``; this node only
translates between ROS and that module and owns timing, QoS, parameters and the lifecycle.

Rejections: rclpy's goal_callback can only say ACCEPT or REJECT, with no reason, so every goal is
accepted and a bad one is immediately *aborted* with ``outcome = OUTCOME_REJECTED`` and the reason
in the result (also logged). A rejected chunk never touches the running one: validation and
planning happen before the new chunk preempts anything.

Outcomes: SUCCEEDED when the last row's time has passed; PREEMPTED when a newer valid chunk
replaces it; CANCELED on cancel; STOPPED on watchdog (stale joint states), e-stop or deactivation.
Status is SUCCEEDED / CANCELED / ABORTED accordingly; read ``outcome`` for the detail.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Sequence

import numpy as np
import rclpy
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    SetParametersResult,
)
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from rclpy.task import Future
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from frs_control.execution import (
    FR3_JOINT_LOWER,
    FR3_JOINT_UPPER,
    FR3_JOINT_VELOCITY,
    ChunkRejected,
    ChunkRequest,
    ExecutionLimits,
    JointPlan,
    RowSchedule,
    Watchdog,
    plan_ee_delta,
    plan_joint_velocity,
    schedule_rows,
    validate_chunk,
    velocity_command,
)
from frs_control.gripper import (
    GRIPPER_OUTPUTS,
    FrankaGripper,
    FrankaGripperSettings,
    GripperLatch,
    GripperOutput,
    GripperUnavailable,
    TopicGripper,
)
from frs_control.kinematics import ArmKinematics
from frs_control.messages import stamp_to_seconds
from frs_control.ros_executor import waking_future
from frs_control.ros_params import RESULT_TIMEOUT, declare_described
from frs_msgs.action import ExecuteChunk

OUTPUTS = ("forward_velocity", "joint_trajectory", "moveit")
COMMAND_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10
)
_HOLD_TIME = 0.05  # s; time_from_start of a hold-at-measured-position trajectory point
_STANDSTILL_PERIOD = 0.1  # s between repeated zero-velocity commands while standing still
Outcome = ExecuteChunk.Result


@dataclasses.dataclass
class _Stream:
    """One accepted goal being streamed; finished exactly once (under the node's lock)."""

    goal: ServerGoalHandle
    plan: JointPlan
    done: Future  # completed once; the goal's coroutine awaits it (see ros_executor)
    outcome: int = Outcome.OUTCOME_SUCCEEDED
    reason: str = ""
    points_executed: int = 0
    last_feedback: int = -1

    def finish(self, outcome: int, reason: str, now: float) -> None:
        self.outcome, self.reason = outcome, reason
        self.points_executed = self.plan.rows_done(now)
        self.done.set_result(outcome)


class ArmControllerNode(LifecycleNode):
    """Streams timestamped, limit-checked action chunks to the robot's controller topics."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("arm_controller", **kwargs)
        self._declare_parameters()
        self._group = ReentrantCallbackGroup()
        self._lock = threading.Lock()
        self._plan_lock = threading.Lock()  # the kinematics' scratch data is single-threaded
        self._active = False
        self._estopped = False
        self._states_fresh = False  # joint states were fresh at the last control tick
        self._stream: _Stream | None = None
        self._hold: tuple[np.ndarray, float] | None = None  # (target, until) after a chunk ends
        self._stop_sent = True  # a stop/hold command for the current standstill is out
        self._last_zero_sent = -math.inf
        self._q: np.ndarray | None = None
        self._watchdog = Watchdog(float(self._param("watchdog_period")))
        self._kinematics = None
        self._timer = None
        self._action_server: ActionServer | None = None
        self._velocity_pub = self._trajectory_pub = self._gripper_pub = None
        self._gripper: GripperOutput | None = None
        self._subscriptions_owned: list[object] = []
        self._services_owned: list[object] = []
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        def frange(lo: float, hi: float) -> dict[str, object]:
            return {"floating_point_range": [FloatingPointRange(from_value=lo, to_value=hi)]}

        limits = ExecutionLimits()
        specs: list[tuple[str, object, str, dict[str, object]]] = [
            ("autostart", True, "configure and activate on start-up (no lifecycle manager)", {}),
            ("output", "forward_velocity", f"command interface, one of {list(OUTPUTS)}", {}),
            ("control_rate", 100.0, "Hz of the command stream and checks", frange(1.0, 1000.0)),
            (
                "watchdog_period",
                0.25,
                "s; joint states older than this stop the arm (dynamic)",
                {**frange(0.01, 5.0), "read_only": False},
            ),
            (
                "chunk_timeout",
                0.5,
                "s after a chunk's last row without a new chunk before holding stops (dynamic)",
                {**frange(0.0, 10.0), "read_only": False},
            ),
            (
                "position_gain",
                5.0,
                "1/s; P-gain toward the interpolated target on top of feedforward (dynamic)",
                {**frange(0.0, 100.0), "read_only": False},
            ),
            ("late_tolerance", limits.late_tolerance, "s a row may be overdue", frange(0.0, 1.0)),
            (
                "future_tolerance",
                limits.future_tolerance,
                "s an observation stamp may be ahead of this clock",
                frange(0.0, 5.0),
            ),
            (
                "max_row_translation",
                limits.max_row_translation,
                "m per ee_delta row; larger rows are rejected",
                frange(0.001, 0.5),
            ),
            (
                "max_row_rotation",
                limits.max_row_rotation,
                "rad per ee_delta row; larger rows are rejected",
                frange(0.001, 3.2),
            ),
            (
                "max_ee_speed",
                limits.max_ee_speed,
                "m/s (row translation / dt); faster ee_delta rows are rejected",
                frange(0.01, 3.0),
            ),
            (
                "reject_velocity_factor",
                limits.reject_velocity_factor,
                "joint_velocity rows above this times the velocity limit are rejected",
                frange(1.0, 10.0),
            ),
            ("joint_lower", list(FR3_JOINT_LOWER), "rad, FR3 joint position lower limits", {}),
            ("joint_upper", list(FR3_JOINT_UPPER), "rad, FR3 joint position upper limits", {}),
            ("joint_velocity_limits", list(FR3_JOINT_VELOCITY), "rad/s, FR3 joint velocity", {}),
            ("workspace_low", list(limits.workspace_low), "m, EE goal box min (base frame)", {}),
            ("workspace_high", list(limits.workspace_high), "m, EE goal box max (base frame)", {}),
            (
                "ik_iterations",
                20,
                "DLS iterations per ee_delta row",
                {"integer_range": [IntegerRange(from_value=1, to_value=200)]},
            ),
            ("joint_prefix", "fr3_", "arm joints are <prefix>joint1..7", {}),
            (
                "gripper_output",
                "topic",
                f"gripper interface, one of {list(GRIPPER_OUTPUTS)}: topic = "
                "gripper_controller/commands stream, franka = franka_gripper move/grasp actions",
                {},
            ),
            ("franka_gripper_namespace", "franka_gripper", "franka_gripper node's namespace", {}),
            ("gripper_open_width", 0.08, "m; franka move goal width to open", frange(0.0, 0.08)),
            ("gripper_speed", 0.1, "m/s of franka move / grasp goals", frange(0.001, 0.2)),
            ("grasp_force", 20.0, "N of franka grasp goals", frange(1.0, 140.0)),
            (
                "grasp_epsilon",
                0.08,
                "m; franka grasp inner/outer width tolerance",
                frange(0.0, 0.08),
            ),
            ("gripper_close_above", 0.6, "franka: close at gripper >= this", frange(0.0, 1.0)),
            ("gripper_open_below", 0.4, "franka: open at gripper <= this", frange(0.0, 1.0)),
            ("base_frame_id", "fr3_link0", "frame ee_delta chunks must be in (empty = this)", {}),
        ]
        declare_described(self, [*specs, RESULT_TIMEOUT])

    def _param(self, name: str) -> object:
        return self.get_parameter(name).value

    def _on_set_parameters(self, params: Sequence[Parameter]) -> SetParametersResult:
        for param in params:
            if param.name == "watchdog_period":
                self._watchdog.period = float(param.value)
        return SetParametersResult(successful=True)

    def _read_limits(self) -> ExecutionLimits:
        arrays = {
            name: tuple(float(v) for v in self._param(name))
            for name in ("joint_lower", "joint_upper", "joint_velocity_limits")
        }
        box = {
            n: tuple(float(v) for v in self._param(n)) for n in ("workspace_low", "workspace_high")
        }
        if any(len(v) != 7 for v in arrays.values()) or any(len(v) != 3 for v in box.values()):
            raise ValueError("joint limits need 7 values each, workspace bounds 3")
        if np.any(np.asarray(arrays["joint_lower"]) >= np.asarray(arrays["joint_upper"])):
            raise ValueError("joint_lower must be below joint_upper")
        if np.any(np.asarray(arrays["joint_velocity_limits"]) <= 0.0):
            raise ValueError("joint_velocity_limits must be positive")
        return ExecutionLimits(
            joint_lower=arrays["joint_lower"],
            joint_upper=arrays["joint_upper"],
            joint_velocity=arrays["joint_velocity_limits"],
            workspace_low=box["workspace_low"],  # type: ignore[arg-type]
            workspace_high=box["workspace_high"],  # type: ignore[arg-type]
            max_row_translation=float(self._param("max_row_translation")),
            max_row_rotation=float(self._param("max_row_rotation")),
            max_ee_speed=float(self._param("max_ee_speed")),
            reject_velocity_factor=float(self._param("reject_velocity_factor")),
            future_tolerance=float(self._param("future_tolerance")),
            late_tolerance=float(self._param("late_tolerance")),
        )

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Check the output, load kinematics, create publishers, subscriptions and servers."""
        self._output = str(self._param("output"))
        if self._output not in OUTPUTS:
            self.get_logger().error(f"output must be one of {OUTPUTS}, got {self._output!r}")
            return TransitionCallbackReturn.FAILURE
        if self._output == "moveit":
            try:
                import moveit.planning  # noqa: F401
            except ImportError:
                self.get_logger().error(
                    "output 'moveit' needs moveit_py, which is not installed here; "
                    "use output:=forward_velocity or output:=joint_trajectory"
                )
                return TransitionCallbackReturn.FAILURE
            self.get_logger().error(
                "output 'moveit' is not implemented yet; use joint_trajectory with MoveIt's "
                "joint_trajectory_controller"
            )
            return TransitionCallbackReturn.FAILURE
        try:
            self._limits = self._read_limits()
        except ValueError as err:
            self.get_logger().error(f"bad limit parameters: {err}")
            return TransitionCallbackReturn.FAILURE
        self._kinematics = ArmKinematics()
        prefix = str(self._param("joint_prefix"))
        self._joint_names = [f"{prefix}joint{i}" for i in range(1, 8)]
        self._name_columns: dict[tuple[str, ...], list[int] | None] = {}
        self._watchdog = Watchdog(float(self._param("watchdog_period")))
        self._q = None

        self._velocity_pub = self._trajectory_pub = None
        if self._output == "forward_velocity":
            self._velocity_pub = self.create_publisher(
                Float64MultiArray, "forward_velocity_controller/commands", COMMAND_QOS
            )
        else:
            self._trajectory_pub = self.create_publisher(
                JointTrajectory, "joint_trajectory_controller/joint_trajectory", COMMAND_QOS
            )
        try:
            self._gripper = self._make_gripper()
        except (GripperUnavailable, ValueError) as err:
            self.get_logger().error(str(err))
            self._destroy_entities()
            return TransitionCallbackReturn.FAILURE
        self._subscriptions_owned = [
            self.create_subscription(
                JointState,
                "joint_states",
                self._on_joint_state,
                qos_profile_sensor_data,
                callback_group=self._group,
            )
        ]
        self._services_owned = [
            self.create_service(Trigger, "frs/estop", self._on_estop, callback_group=self._group),
            self.create_service(
                Trigger, "frs/reset_estop", self._on_reset_estop, callback_group=self._group
            ),
        ]
        self._action_server = ActionServer(
            self,
            ExecuteChunk,
            "frs/execute_chunk",
            execute_callback=self._execute,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            cancel_callback=lambda _goal: CancelResponse.ACCEPT,
            callback_group=self._group,
            result_timeout=float(self.get_parameter("result_timeout").value),
        )
        self.get_logger().info(f"configured: output {self._output}, limits {self._limits}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the control loop."""
        with self._lock:
            self._active = True
            self._stop_sent = False
        period = 1.0 / float(self._param("control_rate"))
        self._timer = self.create_timer(period, self._control_tick, callback_group=self._group)
        self.get_logger().info("active: accepting chunks on frs/execute_chunk")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop motion (running goal -> STOPPED), then stop the control loop."""
        with self._lock:
            self._halt(self._now(), "controller deactivated")
            self._active = False
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release interfaces and kinematics."""
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop motion and release everything."""
        if self._active:
            self.on_deactivate(state)
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def _make_gripper(self) -> GripperOutput | None:
        """The configured gripper output (GripperUnavailable / ValueError if it cannot run)."""
        output = str(self._param("gripper_output"))
        if output not in GRIPPER_OUTPUTS:
            raise ValueError(f"gripper_output must be one of {GRIPPER_OUTPUTS}, got {output!r}")
        if output == "none":
            return None
        if output == "topic":
            self._gripper_pub = self.create_publisher(
                Float64MultiArray, "gripper_controller/commands", COMMAND_QOS
            )
            return TopicGripper(self._gripper_pub, Float64MultiArray)
        latch = GripperLatch(
            close_above=float(self._param("gripper_close_above")),
            open_below=float(self._param("gripper_open_below")),
        )
        settings = FrankaGripperSettings(
            namespace=str(self._param("franka_gripper_namespace")),
            open_width=float(self._param("gripper_open_width")),
            speed=float(self._param("gripper_speed")),
            force=float(self._param("grasp_force")),
            epsilon=float(self._param("grasp_epsilon")),
        )
        return FrankaGripper(self, settings, latch)

    def _destroy_entities(self) -> None:
        if self._action_server is not None:
            self._action_server.destroy()
            self._action_server = None
        for publisher in (self._velocity_pub, self._trajectory_pub, self._gripper_pub):
            if publisher is not None:
                self.destroy_publisher(publisher)
        self._velocity_pub = self._trajectory_pub = self._gripper_pub = None
        if isinstance(self._gripper, FrankaGripper):
            self._gripper.destroy()
        self._gripper = None
        for subscription in self._subscriptions_owned:
            self.destroy_subscription(subscription)
        for service in self._services_owned:
            self.destroy_service(service)
        self._subscriptions_owned, self._services_owned = [], []
        self._kinematics = None

    def stop_for_exit(self) -> None:
        """Send a last stop command (zero velocities / hold) if the node was active."""
        if not self._active or not rclpy.ok(context=self.context):
            return
        with self._lock:
            self._stop_sent = False
            self._halt(self._now(), "controller shutting down")
        time.sleep(0.05)  # let the reliable stop command leave before the publisher goes

    # ------------------------------------------------------------------ inputs
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_joint_state(self, msg: JointState) -> None:
        names = tuple(msg.name)
        columns = self._name_columns.get(names, [])
        if columns == []:
            try:
                columns = [names.index(n) for n in self._joint_names]
            except ValueError:
                columns = None
                self.get_logger().warning(f"joint_states lacks one of {self._joint_names}")
            self._name_columns[names] = columns
        if columns is None or len(msg.position) != len(names):
            return
        q = np.asarray(msg.position, dtype=np.float64)[columns]
        if not np.all(np.isfinite(q)):
            return
        with self._lock:
            self._q = q
            self._watchdog.feed(self._now())

    def _on_estop(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            self._estopped = True
            self._halt(self._now(), "e-stop")
        self.get_logger().error("E-STOP: motion stopped; new chunks are rejected until reset")
        response.success, response.message = True, "e-stop engaged"
        return response

    def _on_reset_estop(
        self, _request: Trigger.Request, response: Trigger.Response
    ) -> Trigger.Response:
        with self._lock:
            was = self._estopped
            self._estopped = False
        self.get_logger().warning("e-stop reset: accepting chunks again")
        response.success = True
        response.message = "e-stop reset" if was else "e-stop was not engaged"
        return response

    # ------------------------------------------------------------------ goals
    def _reject(self, goal: ServerGoalHandle, reason: str) -> ExecuteChunk.Result:
        self.get_logger().warning(f"chunk rejected: {reason}")
        goal.abort()
        return ExecuteChunk.Result(outcome=Outcome.OUTCOME_REJECTED, reason=reason)

    async def _execute(self, goal: ServerGoalHandle) -> ExecuteChunk.Result:
        """Validate and plan (outside the lock), start streaming, wait for the stream to end."""
        chunk = goal.request.chunk
        now = self._now()
        with self._lock:
            q_start = None if self._q is None else self._q.copy()
            problem = self._not_ready_reason(now)
        if problem:
            return self._reject(goal, problem)
        frame = chunk.header.frame_id
        base = str(self._param("base_frame_id"))
        if chunk.action_space == "ee_delta" and frame not in ("", base):
            return self._reject(goal, f"ee_delta chunk in frame {frame!r}; expected {base!r}")
        request = ChunkRequest(
            action_space=chunk.action_space,
            stamp=stamp_to_seconds(chunk.header.stamp),
            dt=float(chunk.dt),
            horizon=int(chunk.horizon),
            dim=int(chunk.dim),
            data=np.asarray(chunk.data, dtype=np.float64),
            normalized=bool(chunk.normalized),
            dim_names=tuple(chunk.dim_names),
            max_points=int(goal.request.max_points),
        )
        try:
            rows = validate_chunk(request, now, self._limits)
            schedule = schedule_rows(
                request.stamp,
                request.dt,
                request.horizon,
                now,
                self._limits.late_tolerance,
                request.max_points,
            )
            with self._plan_lock:
                plan = self._plan(request, rows, schedule, q_start, now)
        except ChunkRejected as err:
            return self._reject(goal, str(err))

        stream = _Stream(goal, plan, waking_future(self))
        with self._lock:
            problem = self._not_ready_reason(self._now())  # e-stop may have come meanwhile
            if not problem:
                if self._stream is not None:
                    self._stream.finish(
                        Outcome.OUTCOME_PREEMPTED, "preempted by a newer chunk", self._now()
                    )
                self._stream, self._hold, self._stop_sent = stream, None, False
                if self._trajectory_pub is not None:
                    self._publish_trajectory(plan)
        if problem:
            return self._reject(goal, problem)
        await stream.done  # set by the control loop, a preempting goal, e-stop or deactivation
        return self._conclude(stream)

    def _plan(
        self,
        request: ChunkRequest,
        rows: np.ndarray,
        schedule: RowSchedule,
        q_start: np.ndarray,
        now: float,
    ) -> JointPlan:
        if request.action_space == "ee_delta":
            return plan_ee_delta(
                rows,
                schedule,
                request.dt,
                q_start,
                now,
                self._kinematics,
                self._limits,
                ik_iterations=int(self._param("ik_iterations")),
            )
        return plan_joint_velocity(rows, schedule, request.dt, q_start, now, self._limits)

    def _not_ready_reason(self, now: float) -> str:
        """Why no chunk may start now ('' when one may). Call with the lock held."""
        if not self._active:
            return "controller is not active (lifecycle state)"
        if self._estopped:
            return "e-stop engaged; call frs/reset_estop"
        if self._q is None:
            return "no joint_states received yet"
        if self._watchdog.is_stale(now):
            return f"joint_states stale ({self._watchdog.age(now):.2f} s old)"
        return ""

    def _conclude(self, stream: _Stream) -> ExecuteChunk.Result:
        plan = stream.plan
        result = ExecuteChunk.Result(
            outcome=stream.outcome,
            reason=stream.reason,
            points_executed=stream.points_executed,
            points_dropped_late=plan.points_dropped_late,
            points_clamped=plan.points_clamped,
        )
        if stream.outcome == Outcome.OUTCOME_SUCCEEDED:
            stream.goal.succeed()
        elif stream.outcome == Outcome.OUTCOME_CANCELED:
            stream.goal.canceled()
        else:
            stream.goal.abort()
        return result

    # ------------------------------------------------------------------ control loop
    def _control_tick(self) -> None:
        now = self._now()
        with self._lock:
            if not self._active:
                return
            if self._estopped:
                self._halt(now, "e-stop")
            elif self._watchdog.is_stale(now):
                age = self._watchdog.age(now)
                reason = f"watchdog: joint_states stale ({age:.2f} s > {self._watchdog.period} s)"
                if self._states_fresh:
                    self.get_logger().error(f"{reason}: stopping")
                self._states_fresh = False
                self._halt(now, reason)
            elif self._stream is not None:
                self._stream_tick(self._stream, now)
            elif self._hold is not None:
                target, until = self._hold
                if now > until:
                    self.get_logger().info("no new chunk within chunk_timeout: stopped")
                    self._halt(now, "chunk timeout")
                elif self._velocity_pub is not None:
                    self._publish_velocity(target, np.zeros(7))
            else:
                self._halt(now, "idle")
            self._states_fresh = not self._watchdog.is_stale(now)

    def _stream_tick(self, stream: _Stream, now: float) -> None:
        """Command the interpolated target, the row's gripper, feedback; finish at the end."""
        plan = stream.plan
        if stream.goal.is_cancel_requested:
            self._halt(now, "canceled", Outcome.OUTCOME_CANCELED)
            return
        if self._velocity_pub is not None:
            target, feedforward = plan.path.sample(now)
            self._publish_velocity(target, feedforward)
        if self._gripper is not None:
            self._gripper.command(plan.gripper_at(now))
        done = plan.rows_done(now)
        if done != stream.last_feedback:
            stream.last_feedback = done
            stream.goal.publish_feedback(
                ExecuteChunk.Feedback(points_executed=done, points_total=len(plan.row_times))
            )
        if now >= plan.end_time:
            stream.finish(Outcome.OUTCOME_SUCCEEDED, "", now)
            self._stream = None
            self._hold = (plan.path.positions[-1], now + float(self._param("chunk_timeout")))

    def _halt(self, now: float, reason: str, outcome: int = Outcome.OUTCOME_STOPPED) -> None:
        """Stop safely: end the running goal, zero velocities / hold at the measured position."""
        if self._stream is not None:
            self._stream.finish(outcome, reason, now)
            self._stream = None
        self._hold = None
        if self._velocity_pub is not None:
            # Zeros at once, then repeated at a low rate while standing still (cheap keep-alive).
            if not self._stop_sent or now - self._last_zero_sent >= _STANDSTILL_PERIOD:
                self._velocity_pub.publish(Float64MultiArray(data=[0.0] * 7))
                self._last_zero_sent = now
        elif not self._stop_sent and self._q is not None and self._trajectory_pub is not None:
            self._trajectory_pub.publish(self._trajectory_msg([_HOLD_TIME], [self._q]))
        self._stop_sent = True

    def _publish_velocity(self, target: np.ndarray, feedforward: np.ndarray) -> None:
        if self._q is None:
            return
        gain = float(self._param("position_gain"))
        command = velocity_command(target, feedforward, self._q, gain, self._limits)
        self._velocity_pub.publish(Float64MultiArray(data=command.tolist()))

    def _publish_trajectory(self, plan: JointPlan) -> None:
        """Send the chunk's remaining knots as one trajectory starting now."""
        now = self._now()
        times = plan.path.times[1:] - now
        keep = times > 0.0
        if not np.any(keep):
            return
        self._trajectory_pub.publish(
            self._trajectory_msg(times[keep].tolist(), plan.path.positions[1:][keep])
        )

    def _trajectory_msg(
        self, times_from_now: Sequence[float], positions: Sequence[np.ndarray]
    ) -> JointTrajectory:
        msg = JointTrajectory(joint_names=self._joint_names)  # zero stamp: start on receipt
        for t, q in zip(times_from_now, positions, strict=True):
            point = JointTrajectoryPoint(positions=[float(v) for v in q])
            point.time_from_start.sec = int(math.floor(t))
            point.time_from_start.nanosec = int((t - math.floor(t)) * 1e9)
            msg.points.append(point)
        return msg


def main(args: list[str] | None = None) -> None:
    """Run the controller (configured and activated when ``autostart``) until Ctrl-C.

    rclpy's own SIGINT handler would shut the context down before a last stop command could be
    sent, so Ctrl-C arrives here as KeyboardInterrupt and the arm is stopped before exiting.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    # Also when started with SIGINT ignored (a background job of a script), and for SIGTERM.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    node = None
    exit_code = 0
    try:
        node = ArmControllerNode()
        executor = SingleThreadedExecutor()  # goals await their stream; see ros_executor
        executor.add_node(node)
        if node.get_parameter("autostart").value:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
            else:
                node.get_logger().fatal("configure failed (see above); exiting")
                exit_code = 1
        if not exit_code:
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop_for_exit()
            node.destroy_node()
        rclpy.try_shutdown()
    if exit_code:
        raise SystemExit(exit_code)


if __name__ == "__main__":
    main()
