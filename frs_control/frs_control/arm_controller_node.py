"""Arm controller node: executes action chunks on the arm, safely.

A lifecycle node (``arm_controller``): ``on_configure`` reads the parameters and creates the ROS
interfaces, ``on_activate`` starts the control loop, ``on_deactivate`` stops motion. With
``autostart`` (default) it configures and activates itself, since ``ros2 lifecycle`` and launch's
lifecycle manager are not available everywhere.

It serves ``frs/execute_chunk`` (frs_msgs/action/ExecuteChunk). This node only wires parameters
(``arm_controller_params``), ROS interfaces and library calls: validation, row timing, late-row
dropping and limits are ``execution.plan_chunk``; streaming, holding, stopping, e-stop and the
watchdog are ``control_loop.ControlLoop``; gripper outputs are ``gripper``.

Rejections: rclpy's goal_callback can only say ACCEPT or REJECT, with no reason, so every goal is
accepted and a bad one is immediately *aborted* with ``outcome = OUTCOME_REJECTED`` and the reason
in the result (also logged). A rejected chunk never touches the running one: validation and
planning happen before the new chunk preempts anything. Status is SUCCEEDED / CANCELED / ABORTED
according to the outcome (see ``control_loop``); read ``outcome`` for the detail.

Planning (validation + IK, up to ~0.5 s for a 1000-row ee_delta chunk) runs on one planning
worker thread, in arrival order, while the executor keeps running the control tick, the
watchdog and the running chunk's stream (issue 14: planning on the executor stopped commands for
0.34-0.70 s). Goals beyond ``max_pending_goals`` waiting for planning are refused in the goal
callback (the client sees ``accepted == False``); the action's services use
``ros_executor.ACTION_BURST_QOS`` so that every goal of a burst gets an answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from frs_control import arm_controller_params as params
from frs_control.control_loop import ControlLoop, Outcome, Stream
from frs_control.execution import ChunkRejected, JointPlan, plan_chunk
from frs_control.gripper import GripperOutput, GripperUnavailable, make_gripper_output
from frs_control.kinematics import ArmKinematics
from frs_control.messages import (
    chunk_request,
    joint_positions,
    joint_trajectory_msg,
    stamp_to_seconds,
)
from frs_control.ros_executor import (
    ACTION_BURST_QOS,
    NO_PUBLISHER_EVENTS,
    NO_SUBSCRIPTION_EVENTS,
    RELIABLE_QOS,
    run_node,
    waking_future,
)
from frs_control.ros_params import declare_described
from frs_msgs.action import ExecuteChunk


class ArmControllerNode(LifecycleNode):
    """Streams timestamped, limit-checked action chunks to the robot's controller topics."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("arm_controller", **kwargs)
        declare_described(self, params.PARAMETERS)
        self._group = ReentrantCallbackGroup()
        # One planning worker: planning stays off the executor, and the kinematics' scratch
        # state is used by one thread only.
        self._planner: ThreadPoolExecutor | None = None
        self._pending_goals = 0  # accepted goals not yet planned (executor thread only)
        self._loop: ControlLoop | None = None
        self._kinematics = ArmKinematics()
        self._timer = None
        self._action_server: ActionServer | None = None
        self._velocity_pub = self._trajectory_pub = None
        self._gripper: GripperOutput | None = None
        self._owned: list[tuple[str, object]] = []  # subscriptions and services to destroy
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _param(self, name: str) -> object:
        return self.get_parameter(name).value

    def _on_set_parameters(self, changed: Sequence[Parameter]) -> SetParametersResult:
        loop = self._loop
        for param in changed:
            if loop is None or param.name not in params.DYNAMIC:
                continue
            if param.name == "watchdog_period":
                loop.watchdog.period = float(param.value)
            elif param.name == "chunk_timeout":
                loop.chunk_timeout = float(param.value)
            else:
                loop.position_gain = float(param.value)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Check the parameters, create publishers, subscriptions, services and the server."""
        try:
            output = params.check_output(self._param)
            limits = params.limits_from_parameters(self._param)
            franka = params.franka_gripper_settings(self._param)
            self._joint_names = params.joint_names(self._param)
            self._gripper = make_gripper_output(
                self, str(self._param("gripper_output")), RELIABLE_QOS, franka
            )
        except (GripperUnavailable, ValueError) as err:
            self.get_logger().error(str(err))
            self._destroy_entities()
            return TransitionCallbackReturn.FAILURE
        # Command and joint-state endpoints without rclpy's event handlers: polled at each of
        # the 100 Hz ticks otherwise (``NO_PUBLISHER_EVENTS``); a command subscriber asking for
        # more than reliable/volatile reports the mismatch itself.
        if output == "forward_velocity":
            self._velocity_pub = self.create_publisher(
                Float64MultiArray,
                "forward_velocity_controller/commands",
                RELIABLE_QOS,
                event_callbacks=NO_PUBLISHER_EVENTS,
            )
        else:
            self._trajectory_pub = self.create_publisher(
                JointTrajectory,
                "joint_trajectory_controller/joint_trajectory",
                RELIABLE_QOS,
                event_callbacks=NO_PUBLISHER_EVENTS,
            )
        self._loop = ControlLoop(
            self,
            limits,
            self.get_logger(),
            velocity_output=output == "forward_velocity",
            watchdog_period=float(self._param("watchdog_period")),
            position_gain=float(self._param("position_gain")),
            chunk_timeout=float(self._param("chunk_timeout")),
        )
        group = self._group
        joints = self.create_subscription(
            JointState,
            "joint_states",
            self._on_joint_state,
            qos_profile_sensor_data,
            callback_group=group,
            event_callbacks=NO_SUBSCRIPTION_EVENTS,
        )
        estop = self.create_service(Trigger, "frs/estop", self._on_estop, callback_group=group)
        reset = self.create_service(
            Trigger, "frs/reset_estop", self._on_reset_estop, callback_group=group
        )
        self._owned = [("subscription", joints), ("service", estop), ("service", reset)]
        self._base_frame = str(self._param("base_frame_id"))
        self._ik_iterations = int(self._param("ik_iterations"))
        self._max_pending_goals = int(self._param("max_pending_goals"))
        self._planner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk_planner")
        self._action_server = ActionServer(
            self,
            ExecuteChunk,
            "frs/execute_chunk",
            execute_callback=self._execute,
            goal_callback=self._on_goal,
            cancel_callback=lambda _goal: CancelResponse.ACCEPT,
            callback_group=group,
            result_timeout=float(self._param("result_timeout")),
            **ACTION_BURST_QOS,
        )
        self.get_logger().info(f"configured: output {output}, limits {limits}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the control loop."""
        self._loop.activate()
        period = 1.0 / float(self._param("control_rate"))
        self._timer = self.create_timer(period, self._on_tick, callback_group=self._group)
        self.get_logger().info("active: accepting chunks on frs/execute_chunk")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop motion (running goal -> STOPPED), then stop the control loop."""
        self._loop.deactivate(self._now())
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the interfaces."""
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop motion and release everything."""
        if self._loop is not None and self._loop.active:
            self.on_deactivate(state)
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def _destroy_entities(self) -> None:
        if self._planner is not None:
            self._planner.shutdown(wait=False, cancel_futures=True)
            self._planner = None
        if self._action_server is not None:
            self._action_server.destroy()
            self._action_server = None
        for publisher in (self._velocity_pub, self._trajectory_pub):
            if publisher is not None:
                self.destroy_publisher(publisher)
        self._velocity_pub = self._trajectory_pub = None
        if self._gripper is not None:
            self._gripper.destroy()
            self._gripper = None
        for kind, entity in self._owned:
            getattr(self, f"destroy_{kind}")(entity)
        self._owned = []
        self._loop = None

    def stop_for_exit(self) -> None:
        """Send a last stop command (zero velocities / hold) if the node was active."""
        if self._loop is None or not self._loop.active or not rclpy.ok(context=self.context):
            return
        self._loop.final_stop(self._now())
        time.sleep(0.05)  # let the reliable stop command leave before the publisher goes

    # ------------------------------------------------------------------ outputs (ControlLoop)
    def velocity(self, command: np.ndarray) -> None:
        """Publish joint velocities on the forward_velocity controller."""
        self._velocity_pub.publish(Float64MultiArray(data=command.tolist()))

    def trajectory(self, times_from_now: Sequence[float], positions: np.ndarray) -> None:
        """Publish knots on the joint_trajectory controller (starting on receipt)."""
        self._trajectory_pub.publish(
            joint_trajectory_msg(self._joint_names, times_from_now, positions)
        )

    def gripper(self, value: float) -> None:
        """Command the gripper output (if any)."""
        if self._gripper is not None:
            self._gripper.command(value)

    # ------------------------------------------------------------------ inputs
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_tick(self) -> None:
        self._loop.tick(self._now())

    def _on_joint_state(self, msg: JointState) -> None:
        q = joint_positions(msg, self._joint_names)
        if q is None:
            self.get_logger().warning(
                f"joint_states lacks one of {self._joint_names} or is not finite; ignored",
                throttle_duration_sec=5.0,
            )
            return
        self._loop.feed_joints(q, self._now(), stamp_to_seconds(msg.header.stamp))

    def _on_estop(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._loop.estop(self._now())
        self.get_logger().error("E-STOP: motion stopped; new chunks are rejected until reset")
        response.success, response.message = True, "e-stop engaged"
        return response

    def _on_reset_estop(
        self, _request: Trigger.Request, response: Trigger.Response
    ) -> Trigger.Response:
        was = self._loop.reset_estop()
        self.get_logger().warning("e-stop reset: accepting chunks again")
        response.success = True
        response.message = "e-stop reset" if was else "e-stop was not engaged"
        return response

    # ------------------------------------------------------------------ goals
    def _reject(self, goal: ServerGoalHandle, reason: str) -> ExecuteChunk.Result:
        # Throttled: each client gets its reason in the result; a flood of bad goals must not
        # become a flood of log lines (a piped log that nobody reads blocks the node).
        self.get_logger().warning(f"chunk rejected: {reason}", throttle_duration_sec=1.0)
        goal.abort()
        return ExecuteChunk.Result(outcome=Outcome.REJECTED, reason=reason)

    def _on_goal(self, _request: ExecuteChunk.Goal) -> GoalResponse:
        """Accept unless ``max_pending_goals`` accepted goals still wait for planning."""
        if self._pending_goals >= self._max_pending_goals:
            self.get_logger().warning(
                f"goal refused: {self._pending_goals} goals already wait for planning "
                "(max_pending_goals)",
                throttle_duration_sec=1.0,
            )
            return GoalResponse.REJECT
        self._pending_goals += 1
        return GoalResponse.ACCEPT

    def _plan(self, goal_request: ExecuteChunk.Goal) -> tuple[JointPlan | None, str]:
        """(plan, '') or (None, why not); runs on the planning worker, from the state measured
        when planning starts (a goal may have waited behind others)."""
        loop = self._loop
        if loop is None:
            return None, "controller is not configured"
        now = self._now()
        q_start, problem = loop.start_state(now)
        if problem:
            return None, problem
        try:
            request = chunk_request(goal_request.chunk, goal_request.max_points)
            plan = plan_chunk(
                request,
                now,
                q_start,
                self._kinematics,
                loop.limits,
                base_frame=self._base_frame,
                ik_iterations=self._ik_iterations,
            )
        except ChunkRejected as err:
            return None, str(err)
        except Exception as err:  # noqa: BLE001  a planning bug rejects the goal: nothing moves
            self.get_logger().error(f"planning failed: {err!r}")
            return None, f"planning failed: {err!r}"
        return plan, ""

    async def _execute(self, goal: ServerGoalHandle) -> ExecuteChunk.Result:
        """Plan on the worker (the executor keeps ticking), start streaming, wait for the end."""
        loop = self._loop
        try:
            planned = waking_future(self)
            self._planner.submit(self._plan, goal.request).add_done_callback(
                lambda job: planned.set_result(job.result())
            )
            plan, problem = await planned
        finally:
            self._pending_goals -= 1
        if problem:
            return self._reject(goal, problem)
        done = waking_future(self)
        stream = Stream(
            plan,
            cancel_requested=lambda: goal.is_cancel_requested,
            publish_feedback=lambda executed, total: goal.publish_feedback(
                ExecuteChunk.Feedback(points_executed=executed, points_total=total)
            ),
            on_finish=lambda finished: done.set_result(finished.outcome),
        )
        problem = loop.start(stream, self._now())
        if problem:
            return self._reject(goal, problem)
        await done  # set by the control loop, a preempting goal, e-stop or deactivation
        if stream.outcome == Outcome.SUCCEEDED:
            goal.succeed()
        elif stream.outcome == Outcome.CANCELED:
            goal.canceled()
        else:
            goal.abort()
        return ExecuteChunk.Result(**stream.result_fields())


def main(args: list[str] | None = None) -> None:
    """Run the controller (configured and activated when ``autostart``) until Ctrl-C / SIGTERM;
    the arm gets a last stop command before the context goes down (see ``run_node``)."""
    run_node(ArmControllerNode, args, on_exit=ArmControllerNode.stop_for_exit)


if __name__ == "__main__":
    main()
