"""Steering node: the ``frs/steer_chunk`` action server in front of ``steer.steer``.

A lifecycle node: ``configure`` loads a flow policy and an observation adapter (``checkpoint``,
``observation_adapter``, options ``adapter.<name>``) and opens topics and the action server;
``activate`` serves goals; ``deactivate`` stops a running goal. It knows no robot: it buffers
``joint_states`` and the adapter's topics, and the adapter turns the samples matched to a goal's
``observation_stamp`` (zero = latest) into the policy's observation. Every goal is accepted; a
bad one is aborted with ``OUTCOME_REJECTED`` and a ``reason``. A newer goal preempts an older
one; cancel and preemption act between integration steps.

Goals steer on one worker thread, so the executor stays free for samples, cancels and newer
goals, except short ones: a goal whose shape last steered within ``inline_max_duration`` and
whose samples have arrived steers on the executor thread when accepted (no hand-off, no GIL
contest: ~0.8 ms of ~5 ms overhead), and ends before any cancel or newer goal is read.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.exceptions import InvalidHandle
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import qos_profile_sensor_data
from rclpy.task import Future
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from frs_control.messages import MessageError, message_class
from frs_control.ros_executor import (
    ACTION_BURST_QOS,
    LATCHED_QOS,
    NO_PUBLISHER_EVENTS,
    NO_SUBSCRIPTION_EVENTS,
    RELIABLE_QOS,
    latched_subscription_events,
    run_node,
    take_waiting_messages,
    waking_future,
)
from frs_control.ros_params import RESULT_TIMEOUT, declare_described
from frs_msgs.action import SteerChunk
from frs_msgs.msg import SteeringDiagnostics, SteeringRecord
from frs_steering.adapters import ObservationAdapter, adapter_class
from frs_steering.checkpoint import CheckpointError
from frs_steering.model import FlowMatchingPolicy
from frs_steering.observation import InputBuffers, ObservationError
from frs_steering.policies import load_checkpoint_parameter
from frs_steering.steer import SteerResult, available_methods
from frs_steering.steering_goals import (
    NODE_PARAMETERS,
    GoalCanceled,
    GoalInputs,
    GoalParameters,
    GoalPreempted,
    GoalRejected,
    Prepared,
    Served,
    SteeringDurations,
    SteerRequest,
    StepMonitor,
    load_learned_policies,
    steer_prepared,
    weights_sha256,
)
from frs_steering.steering_messages import (
    goal_feedback,
    markers_msg,
    record_msg,
    refused,
    result_msg,
    stopped,
)

Result = SteerChunk.Result
ADAPTER_PREFIX = "adapter."
#: s a thread may hold the GIL while another waits for it (CPython's default: 5 ms). The
#: executor thread and the compute worker hand each goal back and forth (start, observation
#: arrived, result); with one of them busy in Python a hand-off waits ~2 switch intervals
#: (measured: 0.62 ms at 0.5 ms, 0.20 ms at 0.1 ms).
GIL_SWITCH_S = 0.0001


class SteeringNode(LifecycleNode):
    """Lifecycle node serving ``frs/steer_chunk`` (see the module docstring)."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003 - rclpy Node keyword arguments
        super().__init__("steering", **kwargs)
        declare_described(
            self,
            ((n, d, text, {**extra, "read_only": ro}) for n, d, text, ro, extra in NODE_PARAMETERS),
        )
        declare_described(self, [RESULT_TIMEOUT])
        try:  # the adapter's options are parameters too; an unknown adapter fails configure
            self._adapter_class = adapter_class(str(self._param("observation_adapter")))
            options = self._adapter_class.all_options()
        except ValueError as error:
            self._adapter_class, self._adapter_error, options = None, str(error), ()
        declare_described(self, ((ADAPTER_PREFIX + n, d, t, {}) for n, d, t in options))
        self._goal_lock = threading.Lock()
        self._jobs: ThreadPoolExecutor | None = None  # the one compute worker, made in configure
        self._current_goal: ServerGoalHandle | None = None
        self._running: dict[bytes, Future] = {}  # goal id -> its worker's outcome, until executed
        self._active = False
        self._policy = None
        self._adapter: ObservationAdapter | None = None
        self._inputs: InputBuffers | None = None
        self._goals: GoalInputs | None = None  # made in configure
        self._instruction: tuple[str, Any] | None = None
        self._entities: list = []  # subscriptions and the action server made in configure
        self._sample_subscriptions: list = []  # those of joint_states and the adapter's streams
        self._durations = SteeringDurations()  # which goal shapes steer inline (see _serve)
        self._action_server: ActionServer | None = None
        self._outputs: dict[str, Any] = {}

    def _param(self, name: str):  # noqa: ANN202
        return self.get_parameter(name).value

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._load()
        except (CheckpointError, ValueError, RuntimeError, OSError) as error:
            self.get_logger().error(f"configure failed: {error}")
            self._policy = None
            return TransitionCallbackReturn.FAILURE
        self._open_interfaces()
        spec = self._policy.spec
        self.get_logger().info(
            f"configured: policy {self._checkpoint}, adapter {self._adapter.name} "
            f"({self._adapter.layout.action_space}), chunk {spec.horizon}x{spec.dim} "
            f"(real {spec.num_real}), {spec.num_steps} steps, methods {list(available_methods())}"
            f", learned policies {self._learned.loaded()}"
        )
        return TransitionCallbackReturn.SUCCESS

    def _load(self) -> None:
        if self._adapter_class is None:
            raise ValueError(self._adapter_error)
        torch.set_num_threads(int(self._param("torch_threads")))
        device = str(self._param("device"))
        checkpoint, policy = load_checkpoint_parameter(str(self._param("checkpoint")), device)
        if isinstance(policy, FlowMatchingPolicy):
            policy.compile_velocity()  # runs without the GIL, beside this node's executor
        options = {
            name: self._param(ADAPTER_PREFIX + name)
            for name, _, _ in self._adapter_class.all_options()
        }
        adapter = self._adapter_class(options)
        adapter.bind(policy)
        if adapter.needs_instruction:
            adapter.encode_instruction("warm-up")  # load the encoder now, not on first use
        self._learned = load_learned_policies(self._param, policy, device)
        self._checkpoint, self._checkpoint_sha256 = checkpoint, weights_sha256(checkpoint)
        self._adapter, self._policy = adapter, policy

    def _open_interfaces(self) -> None:
        adapter = self._adapter
        self._inputs = InputBuffers(adapter, int(self._param("buffer_size")))
        self._goals = GoalInputs(
            self._policy,
            adapter,
            self._inputs,
            self._learned,
            now_ns=lambda: self.get_clock().now().nanoseconds,
            instruction=lambda: self._instruction,
        )
        self._jobs = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="frs_steer",
            initializer=torch.set_num_threads,  # intra-op threads are set per calling thread
            initargs=(int(self._param("torch_threads")),),
        )
        # Every endpoint below without rclpy's event handlers (each would be polled on every
        # executor pass, i.e. several times per goal), but the instruction's QoS check.
        sensor = functools.partial(
            self.create_subscription,
            qos_profile=qos_profile_sensor_data,  # best effort, volatile: matches any publisher
            event_callbacks=NO_SUBSCRIPTION_EVENTS,
        )
        self._sample_subscriptions = [sensor(JointState, "joint_states", self._on_joints)]
        for stream in adapter.streams():
            callback = functools.partial(self._on_stream, stream.key, stream.topic)
            self._sample_subscriptions.append(
                sensor(message_class(stream.msg_type), stream.topic, callback)
            )
        instruction = self.create_subscription(
            String,
            "frs/instruction",
            self._on_instruction,
            LATCHED_QOS,
            event_callbacks=latched_subscription_events(self, "frs/instruction"),
        )
        self._entities = [*self._sample_subscriptions, instruction]
        publish = functools.partial(
            self.create_lifecycle_publisher,
            qos_profile=RELIABLE_QOS,  # a subscriber asking for more reports the mismatch
            event_callbacks=NO_PUBLISHER_EVENTS,
        )
        self._outputs = {
            "diagnostics": publish(SteeringDiagnostics, "frs/diagnostics"),
            "markers": publish(MarkerArray, "frs/markers"),
            "record": publish(SteeringRecord, "frs/steering/record"),
        }
        self._action_server = ActionServer(
            self,
            SteerChunk,
            "frs/steer_chunk",
            execute_callback=self._execute,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            handle_accepted_callback=self._on_accepted,
            cancel_callback=lambda _handle: CancelResponse.ACCEPT,
            result_timeout=float(self._param("result_timeout")),
            **ACTION_BURST_QOS,
        )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self.get_logger().info("active: serving frs/steer_chunk")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False  # a running goal sees this between steps and is aborted
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close_interfaces()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._close_interfaces()
        return TransitionCallbackReturn.SUCCESS

    def stop_serving(self) -> None:
        """Abort the running goal at its next step and wait for the worker (clean exits)."""
        self._active = False
        jobs, self._jobs = self._jobs, None
        if jobs is not None:
            jobs.shutdown(wait=True)
        self._running.clear()

    def _close_interfaces(self) -> None:
        """Finish every goal first (inactive, queued ones are rejected at once), then destroy."""
        self.stop_serving()
        if self._action_server is not None:
            self._action_server.destroy()
            self._action_server = None
        for entity in self._entities:
            self.destroy_subscription(entity)
        self._entities, self._sample_subscriptions = [], []
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}
        self._policy = self._instruction = self._goals = None

    # ------------------------------------------------------------------ topics
    def _on_joints(self, msg: JointState) -> None:
        if not self._inputs.add_joints(msg):
            self.get_logger().warning(
                f"joint_states lacks some of {list(self._adapter.arm_joints)} + "
                f"{list(self._adapter.finger_joints)} or is not finite; ignored",
                throttle_duration_sec=5.0,
            )

    def _on_stream(self, key: str, topic: str, msg: Any) -> None:
        try:
            self._inputs.add(key, msg)
        except (ObservationError, ValueError) as error:
            self.get_logger().warning(f"{topic}: {error}; ignored", throttle_duration_sec=5.0)

    def _on_instruction(self, msg: String) -> None:
        text = msg.data.strip()
        if self._instruction is None or self._instruction[0] != text:
            needs = self._adapter.needs_instruction
            self._instruction = (text, self._adapter.encode_instruction(text) if needs else None)
            self.get_logger().info(f"instruction: {text!r}")

    # ------------------------------------------------------------------ goals
    def _on_accepted(self, goal_handle: ServerGoalHandle) -> None:
        with self._goal_lock:
            self._current_goal = goal_handle  # an older goal sees this between steps
        jobs = self._jobs
        if jobs is not None:
            # Steering starts here, not in ``_execute``: that runs one executor pass later.
            done = waking_future(self)
            self._running[bytes(goal_handle.goal_id.uuid)] = done
            params = GoalParameters.read(self._param)
            request, prepared = self._prepare_inline(goal_handle.request, params)

            def job() -> None:
                try:
                    done.set_result(self._serve(goal_handle, params, request, prepared))
                except BaseException as error:  # noqa: BLE001 - raised again by ``await done``
                    done.set_exception(error)

            if prepared is None:
                jobs.submit(job)
            else:
                # Executing first: the client reads that status while this goal steers, and
                # rclpy's execute task is queued to send the result right after.
                goal_handle.execute()
                job()
                return
        goal_handle.execute()

    def _prepare_inline(
        self, goal: Any, params: GoalParameters
    ) -> tuple[SteerRequest | None, Prepared | None]:
        """The goal's checked settings, and its inputs if it steers here, on the executor
        thread (module docstring). Without inputs the worker serves it: it waits for samples
        and words refusals (a goal that failed its check is checked again there)."""
        budget = params.inline_max_duration
        if budget <= 0 or not self._active or self._policy is None:
            return None, None
        started, request = time.perf_counter(), None
        try:
            request = self._check(goal, params)
            if not self._durations.at_most(params.shape(request), budget):
                return request, None
            take_waiting_messages(self._sample_subscriptions)  # often queued behind the goal
            return request, self._goals.prepare(goal, params, request, started, wait_s=0.0)
        except (GoalRejected, ObservationError, MessageError, InvalidHandle):
            return request, None
        except Exception as error:  # noqa: BLE001 - never strand an accepted goal: the worker serves it
            self.get_logger().warning(
                f"inline preparation failed ({error!r}); the worker serves the goal",
                throttle_duration_sec=5.0,
            )
            return None, None

    async def _execute(self, goal_handle: ServerGoalHandle) -> Any:
        """Wait for the goal's steering (started on acceptance) without holding the executor,
        which stays free for samples, cancels and newer goals; the transition happens here."""
        done = self._running.pop(bytes(goal_handle.goal_id.uuid), None)
        if done is None:  # accepted while the node had no worker (not configured)
            goal_handle.abort()
            return Result(outcome=Result.OUTCOME_REJECTED, reason="the steering node is not active")
        outcome: Served = await done
        if outcome.transition == "succeed":
            goal_handle.succeed()
            if outcome.publish is not None:
                # A task of its own runs after this one has returned, i.e. after rclpy has
                # sent the result: building the extras never competes with it for the GIL.
                self.executor.create_task(self._submit, outcome.publish)
        elif outcome.transition == "canceled":
            goal_handle.canceled()
        elif goal_handle.is_active:
            goal_handle.abort()
        return outcome.result

    def _submit(self, work: Callable[[], None]) -> None:
        """Hand ``work`` to the compute worker (if the node still serves)."""
        if self._jobs is not None:
            self._jobs.submit(work)

    def _check(self, goal: Any, params: GoalParameters) -> SteerRequest:
        """The goal's steering settings; GoalRejected names a bad one."""
        if not self._active or self._goals is None:
            raise GoalRejected("the steering node is not active")
        return self._goals.check(goal, params)

    def _serve(
        self,
        goal_handle: ServerGoalHandle,
        params: GoalParameters,
        request: SteerRequest | None,
        prepared: Prepared | None,
    ) -> Served:
        """Steer one goal: on the worker, or on the executor with ``prepared`` inputs."""
        goal = goal_handle.request
        if prepared is None:
            try:
                started = time.perf_counter()
                request = request or self._check(goal, params)
                wait_s = params.observation_wait
                prepared = self._goals.prepare(goal, params, request, started, wait_s)
            except (GoalRejected, ObservationError, MessageError) as error:
                return refused(str(error))
        prepare_s = time.perf_counter() - prepared.started
        layout = self._adapter.layout
        feedback = goal_feedback(goal_handle, self.context.ok) if params.publish_feedback else None
        monitor = StepMonitor(
            canceled=lambda: goal_handle.is_cancel_requested or not self._active,
            current=lambda: self._current_goal is goal_handle,
            publish=feedback,
            period=params.feedback_period,
        )
        try:
            result, seconds = steer_prepared(
                self._policy,
                prepared,
                monitor,
                include_unsteered=params.include_unsteered,
                round_trip=params.round_trip,
                gripper_index=layout.gripper_index(),
                limit=params.max_normalized,
                temperature=params.temperature,
            )
        except (GoalCanceled, GoalPreempted, ValueError, RuntimeError) as error:
            served = stopped(
                error, active=self._active, cancel_requested=goal_handle.is_cancel_requested
            )
            if served.result.outcome == Result.OUTCOME_FAILED:
                self.get_logger().error(served.result.reason)
            return served
        self._durations.record(params.shape(prepared.request), seconds)
        observation, reference = prepared.observation, prepared.built.real
        msg = result_msg(
            result, self._policy.spec, layout, observation, reference, prepare_s, prepared.started
        )
        publish = functools.partial(self._publish_extras, goal, params, prepared, result, msg)
        return Served("succeed", msg, publish)

    def _publish_extras(
        self, goal: Any, params: GoalParameters, prepared: Prepared, result: SteerResult, msg: Any
    ) -> None:
        """Diagnostics, rviz markers and the replay record: after the result, off its path."""
        outputs = self._outputs
        if not self._active or not outputs:
            return
        outputs["diagnostics"].publish(msg.diagnostics)
        if params.publish_markers:
            layout, observation, built = self._adapter.layout, prepared.observation, prepared.built
            outputs["markers"].publish(markers_msg(result, layout, observation, built.real))
        if params.publish_record:
            topics = [stream.topic for stream in self._adapter.streams()]
            unsteered, sha = params.include_unsteered, self._checkpoint_sha256
            outputs["record"].publish(record_msg(goal, prepared, msg, unsteered, sha, topics))


def main(args: list[str] | None = None) -> None:
    """Run the steering node until Ctrl-C; a running goal is aborted before the node goes."""
    sys.setswitchinterval(GIL_SWITCH_S)
    run_node(SteeringNode, args, on_exit=SteeringNode.stop_serving)


if __name__ == "__main__":
    main()
