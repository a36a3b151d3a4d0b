"""Proposer node: per chunk, ask a reasoner for a coarse direction, steer it, execute it.

Loop (on its own thread, so a slow VLM never blocks the executor): take the latest observation
(``joint_states`` -> EE position by FK, ``frs/object_states``, ``frs/instruction``, optionally
``camera/image_raw``; see :mod:`frs_vlm_bridge.world_view`), ask the backend (``scripted`` |
``human`` | ``vlm`` | ``none``) for a :class:`CoarseProposal`, publish it as
``frs_msgs/CoarseReference`` on ``frs/reference``, send it to ``frs/steer_chunk`` with the
observation's stamp, then send the refined chunk to ``frs/execute_chunk``. A deferral carries
nothing that depends on the observation it was asked about, so it is sent with the newest
observation's stamp: after a slow or failed VLM call the policy acts on the present, not on a
state whose chunk would already be in the past. With ``plan_ahead`` (default) it plans the next
chunk while this one runs (:mod:`frs_vlm_bridge.plan_ahead`); without it, it waits for each
execution result. It repeats while enabled (``frs/proposer/enable``) and while the episode
(``frs/episode_status``) is not done. This module only wires ROS to those library calls.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import PointStamped
from rclpy.action import ActionClient
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import (
    QoSProfile,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool

from frs_control.messages import stamp_to_ns
from frs_control.ros_executor import (
    ACTION_BURST_QOS,
    LATCHED_QOS,
    RELIABLE_QOS,
    on_executor,
    run_node,
)
from frs_control.ros_params import declare_described
from frs_msgs.action import ExecuteChunk, SteerChunk
from frs_msgs.msg import CoarseReference, EpisodeStatus, ObjectStates
from frs_steering.reasoning import NoReasoner, Reasoner
from frs_vlm_bridge.goals import steer_goal
from frs_vlm_bridge.plan_ahead import ChunkEnd, PlanAhead, rows_due, rows_to_execute
from frs_vlm_bridge.proposer_params import (
    BACKENDS,
    PARAMETERS,
    plan_ahead_settings,
    scripted_config,
    steer_settings,
    vlm_config,
)
from frs_vlm_bridge.transforms import StaticTransform
from frs_vlm_bridge.world_view import LatestInputs, ProposerObservation, ViewSettings, build_view

#: s between repeated warnings (bad inputs, a failing VLM, unavailable servers).
WARN_PERIOD_S = 5.0


class ProposerNode(Node):
    """Reasoner -> steering -> arm controller loop (see the module docstring)."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003 - rclpy Node keyword arguments
        super().__init__("proposer", **kwargs)
        declare_described(self, PARAMETERS)
        backend = str(self._param("reasoner"))
        if backend not in BACKENDS:
            raise ValueError(f"parameter reasoner must be one of {BACKENDS}, got {backend!r}")
        self._backend = backend
        self._frame = str(self._param("frame_id"))
        # Immutable, replaced whole: the loop reads it without the lock writers take.
        self._lock = threading.Lock()
        self._latest = LatestInputs()
        self._enabled = bool(self._param("start_enabled"))
        self._stop = threading.Event()
        self._plan = PlanAhead()

        from frs_control.kinematics import ArmKinematics

        self._kinematics = ArmKinematics()
        self._vlm = None  # the VlmReasoner when reasoner is vlm (its failures are reported)
        self._reasoner: Reasoner = self._make_reasoner(backend)

        group = ReentrantCallbackGroup()
        inputs: list[tuple[type, str, str, QoSProfile]] = [
            (JointState, "joint_states", "joints", qos_profile_sensor_data),
            (ObjectStates, "frs/object_states", "objects", qos_profile_sensor_data),
            (String, "frs/instruction", "instruction", LATCHED_QOS),
            (EpisodeStatus, "frs/episode_status", "status", RELIABLE_QOS),
        ]
        if self._param("use_camera"):
            inputs.append((Image, "camera/image_raw", "image", qos_profile_sensor_data))
        for msg_type, topic, field, qos in inputs:
            self.create_subscription(msg_type, topic, self._keep(field), qos, callback_group=group)
        self._reference_pub = self.create_publisher(CoarseReference, "frs/reference", RELIABLE_QOS)
        self.create_service(SetBool, "frs/proposer/enable", self._on_enable, callback_group=group)
        self._steer = ActionClient(
            self, SteerChunk, "frs/steer_chunk", callback_group=group, **ACTION_BURST_QOS
        )
        self._execute = ActionClient(
            self, ExecuteChunk, "frs/execute_chunk", callback_group=group, **ACTION_BURST_QOS
        )
        self._thread = threading.Thread(target=self._loop, name="proposer_loop", daemon=True)
        self.get_logger().info(f"proposer up: reasoner {backend} ({self._reasoner!r})")

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _make_reasoner(self, backend: str) -> Reasoner:
        if backend == "none":  # e.g. method noise_policy: a trained noise policy drives
            return NoReasoner()
        if backend == "scripted":  # the simulation's reasoner: imports frs_sim only here
            from frs_sim.reasoner import ScriptedReasoner

            config = scripted_config(self._param)
            return ScriptedReasoner(config, seed=int(self._param("scripted_seed")))
        if backend == "human":
            from frs_vlm_bridge.human import HumanConfig, HumanReasoner

            reasoner = HumanReasoner(
                HumanConfig(max_age_s=float(self._param("human_max_age"))),
                clock=lambda: self._now_ns() * 1e-9,
            )
            self._setup_human_inputs(reasoner)
            return reasoner
        from frs_vlm_bridge.vlm import FailureWarnings, VlmReasoner

        self._vlm = VlmReasoner(vlm_config(self._param))
        self._vlm_warnings = FailureWarnings(WARN_PERIOD_S)
        return self._vlm

    # ------------------------------------------------------------------ human inputs
    def _setup_human_inputs(self, reasoner) -> None:  # noqa: ANN001 - HumanReasoner
        self._human = reasoner
        self._tf_buffer = None
        try:
            from tf2_ros import Buffer, TransformListener

            self._tf_buffer = Buffer()
            self._tf_listener = TransformListener(self._tf_buffer, self)
        except ImportError:
            self.get_logger().info(
                "tf2_ros not installed: clicked points outside "
                f"{self._frame!r} use the camera_* static transform parameters"
            )
        self._static = StaticTransform(
            translation=tuple(self._param("camera_translation")),
            quaternion_xyzw=tuple(self._param("camera_quaternion")),
            parent_frame=self._frame,
            child_frame=str(self._param("camera_frame_id")),
        )
        self.create_subscription(String, "frs/human/command", self._on_command, RELIABLE_QOS)
        self.create_subscription(PointStamped, "clicked_point", self._on_click, RELIABLE_QOS)

    def _on_command(self, msg: String) -> None:
        try:
            self._human.command(msg.data)
        except ValueError as error:
            self.get_logger().warning(f"ignored human command: {error}")

    def _on_click(self, msg: PointStamped) -> None:
        point = np.array([msg.point.x, msg.point.y, msg.point.z])
        frame = msg.header.frame_id
        try:
            if frame not in ("", self._frame):
                point = self._to_base(frame, point)
            self._human.click(point)
        except (ValueError, LookupError) as error:
            self.get_logger().warning(f"ignored clicked point in {frame!r}: {error}")

    def _to_base(self, frame: str, point: np.ndarray) -> np.ndarray:
        if self._tf_buffer is not None:
            from rclpy.time import Time as RosTime

            transform = self._tf_buffer.lookup_transform(self._frame, frame, RosTime())
            t, q = transform.transform.translation, transform.transform.rotation
            return StaticTransform((t.x, t.y, t.z), (q.x, q.y, q.z, q.w)).apply(point)
        if frame != self._static.child_frame:
            raise LookupError(
                f"no transform {frame!r} -> {self._frame!r} (no tf2; camera_frame_id is "
                f"{self._static.child_frame!r})"
            )
        return self._static.apply(point)

    # ------------------------------------------------------------------ topics and switch
    def _keep(self, field: str):  # noqa: ANN202
        def store(msg) -> None:  # noqa: ANN001
            value = msg.data.strip() if field == "instruction" else msg
            with self._lock:
                self._latest = dataclasses.replace(self._latest, **{field: value})

        return store

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> Any:
        self._enabled = bool(request.data)
        response.success = True
        response.message = "proposer enabled" if self._enabled else "proposer disabled"
        self.get_logger().info(response.message)
        return response

    # ------------------------------------------------------------------ the loop
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def _observation(self) -> ProposerObservation | None:
        """The latest observation, or None (the reason logged) while there is none."""
        latest = self._latest
        settings = ViewSettings(
            arm_joints=tuple(self._param("arm_joints")),
            finger_joints=tuple(str(n) for n in self._param("finger_joints") if n),
            finger_open_sum=float(self._param("finger_open_sum")),
            max_state_age_s=float(self._param("max_state_age")),
            max_image_age_s=float(self._param("max_image_age")),
            need_instruction=self._backend != "human",
        )
        view = build_view(latest, self._now_ns(), settings, self._kinematics.forward)
        log = self.get_logger()
        if view.image_problem:
            log.warning(f"image dropped: {view.image_problem}", throttle_duration_sec=WARN_PERIOD_S)
        if view.bad_input:
            log.warning(view.waiting, throttle_duration_sec=WARN_PERIOD_S)
        elif view.waiting:
            log.info(view.waiting, throttle_duration_sec=WARN_PERIOD_S)
        return view.observation

    def _loop(self) -> None:
        episode = None
        while not self._stop.is_set() and rclpy.ok(context=self.context):
            status = self._latest.status
            if not self._enabled or (status is not None and status.done):
                self._stop.wait(0.02)
                continue
            if status is not None and status.episode != episode:
                episode = status.episode
                if hasattr(self._reasoner, "reset"):
                    self._reasoner.reset(int(self._param("scripted_seed")) + int(episode))
            observation = self._observation()
            if observation is None:
                self._stop.wait(0.01)
                continue
            self._plan.settings = plan_ahead_settings(self._param)
            try:
                end = self._one_chunk(observation)
            except Exception as error:  # keep proposing; the error is named in the log
                self.get_logger().error(f"chunk failed: {type(error).__name__}: {error}")
                end = ChunkEnd.FAILED
            self._stop.wait(self._plan.delay_after(end))

    def _one_chunk(self, observation: ProposerObservation) -> ChunkEnd:
        proposal = self._reasoner.propose(observation.reasoning)
        if self._vlm is not None:
            report = self._vlm_warnings.update(
                self._vlm.failures_in_a_row > 0, proposal.reason, time.monotonic()
            )
            if report is not None:  # rclpy wants one severity per call site
                level, text = report
                if level >= logging.WARNING:
                    self.get_logger().warning(text)
                else:
                    self.get_logger().info(text)
        stamp = observation.stamp
        if proposal.defer:  # the policy acts alone: on the newest observation
            fresh = self._observation()
            if fresh is None:
                return ChunkEnd.FAILED
            stamp = fresh.stamp
        goal = steer_goal(
            proposal,
            stamp=stamp,
            frame_id=self._frame,
            instruction=observation.reasoning.instruction,
            settings=steer_settings(self._param),
        )
        self._reference_pub.publish(goal.reference)
        what = "defer" if proposal.defer else np.round(proposal.direction, 2).tolist()
        self.get_logger().debug(f"proposal {what} ({proposal.reason})")

        steered = self._send(self._steer, goal, float(self._param("steer_timeout")), "steering")
        if isinstance(steered, ChunkEnd):
            return steered
        if steered.outcome != SteerChunk.Result.OUTCOME_SUCCEEDED:
            self.get_logger().warning(
                f"steering outcome {steered.outcome}: {steered.reason}", throttle_duration_sec=2.0
            )
            return ChunkEnd.FAILED
        refined = steered.refined
        execute_rows = int(self._param("execute_rows"))
        stamp_ns = stamp_to_ns(stamp)
        late = rows_due(stamp_ns, self._now_ns(), float(refined.dt))
        rows = rows_to_execute(execute_rows, int(refined.horizon), late)
        executed = self._send(
            self._execute,
            ExecuteChunk.Goal(chunk=refined, max_points=rows if execute_rows else 0),
            float(self._param("execute_timeout")),
            "execution",
            stamp_ns=stamp_ns,
            plan_at_ns=self._plan.plan_at_ns(stamp_ns, rows, float(refined.dt)),
        )
        if isinstance(executed, ChunkEnd):
            return executed
        if executed.outcome != ExecuteChunk.Result.OUTCOME_SUCCEEDED:
            self.get_logger().warning(
                f"execution outcome {executed.outcome}: {executed.reason}",
                throttle_duration_sec=2.0,
            )
            return ChunkEnd.FAILED
        return ChunkEnd.SUCCEEDED

    def _wait(self, future, timeout: float, give_up: bool = True) -> Any:  # noqa: ANN001
        """Block this (non-executor) thread until ``future`` is done; None on timeout or stop.

        ``give_up``: the future is then canceled, so nothing keeps waiting for an answer that
        may never come (a stopped server). A result still due (a chunk left running to plan the
        next one, or one being canceled) is left to arrive: dropping its request made rclpy log
        "Ignoring unexpected result response" for every plan-ahead chunk.
        """
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        deadline = time.monotonic() + timeout
        while not done.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            if self._stop.is_set() or time.monotonic() >= deadline:
                if give_up:
                    future.cancel()
                return None
        return None if future.cancelled() else future.result()

    def _send(
        self,
        client: ActionClient,
        goal: Any,
        timeout: float,
        what: str,
        stamp_ns: int | None = None,
        plan_at_ns: int | None = None,
    ) -> Any:
        """Send ``goal``; its result, or how the chunk ended without one (logged).

        With ``stamp_ns`` the acceptance is a latency sample for plan-ahead; with ``plan_at_ns``
        (node clock) the wait may end then, the goal left running (``ChunkEnd.PLAN_NEXT``).
        """
        if not client.server_is_ready():
            self.get_logger().warning(
                f"{what} server not available", throttle_duration_sec=WARN_PERIOD_S
            )
            return ChunkEnd.FAILED
        deadline = time.monotonic() + timeout
        handle = self._wait(on_executor(self, lambda: client.send_goal_async(goal)), timeout)
        if handle is None:  # the server is stopped, starved or gone: say so, try again later
            if not self._stop.is_set():
                self.get_logger().warning(
                    f"{what} goal not answered within {timeout:g} s: is the {what} node running?",
                    throttle_duration_sec=2.0,
                )
            return ChunkEnd.FAILED
        if not handle.accepted:
            self.get_logger().warning(
                f"{what} goal refused by the server (busy)", throttle_duration_sec=2.0
            )
            return ChunkEnd.FAILED
        if stamp_ns is not None:
            self._plan.accepted(stamp_ns, self._now_ns())
        wait = self._plan.result_wait(plan_at_ns, self._now_ns(), deadline - time.monotonic())
        result_request = on_executor(self, handle.get_result_async)
        response = self._wait(result_request, wait.seconds, give_up=False)
        if response is not None:
            return response.result
        if wait.plan_next or self._stop.is_set():
            return ChunkEnd.PLAN_NEXT
        self.get_logger().warning(f"{what} timed out after {timeout:g} s; canceling")
        on_executor(self, handle.cancel_goal_async)
        return ChunkEnd.FAILED


def main(args: list[str] | None = None) -> None:
    """Run the proposer node until interrupted (exits through ``run_node``: no RCLError when
    Ctrl-C arrives while a message is being taken)."""

    def make_node() -> ProposerNode:
        node = ProposerNode()
        node.start()  # the proposing loop has its own thread
        return node

    try:
        run_node(make_node, args, on_exit=ProposerNode.stop)
    except ValueError as error:  # bad parameters: say which, exit non-zero
        print(f"[proposer] {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
