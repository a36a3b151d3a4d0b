"""Steering node: the ``frs/steer_chunk`` action server in front of ``steer.steer``.

A lifecycle node (ros2/demos ``lifecycle_py``): ``configure`` loads the policy checkpoint and the
instruction encoder and opens the topics and the action server; ``activate`` starts serving
goals and publishing; ``deactivate`` stops any running goal. With ``autostart`` (default) it
configures and activates itself, since launch-free installs have no lifecycle manager.

Observations come from the robot's topics: ``joint_states`` (arm + finger joints) and
``frs/object_states`` (same stamp per tick on the simulated robot) go into short stamped buffers;
a goal conditions on the buffered observation whose stamp matches ``observation_stamp`` (zero =
latest). The policy state is :func:`frs_sim.env.tabletop_state` of the EE pose (FK of
the joints with :class:`ArmKinematics`), gripper opening, joints, cubes and mats, plus the
MiniLM embedding of the latest ``frs/instruction`` (embedded once per new text).

Goal checks: rclpy's ``goal_callback`` can only say accept/reject, with no reason, so every
goal is accepted and a bad one is then *aborted* with ``OUTCOME_REJECTED`` and a ``reason``
naming the problem. A newer goal preempts an older one (``OUTCOME_PREEMPTED``); cancel and
preemption take effect between integration steps.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rclpy
import torch
from rcl_interfaces.msg import FloatingPointRange, IntegerRange
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from frs_control.messages import MessageError, chunk_to_msg, ns_to_stamp, stamp_to_ns
from frs_control.ros_executor import waking_future
from frs_control.ros_params import RESULT_TIMEOUT, declare_described
from frs_msgs.action import SteerChunk
from frs_msgs.msg import ObjectStates, PhaseTiming, SteeringDiagnostics, SteeringRecord
from frs_sim import scene
from frs_sim.env import STATE_DIM
from frs_steering.checkpoint import CheckpointError, load_policy
from frs_steering.integrate import as_solver
from frs_steering.learning.noise_policy import NoisePolicy, load_noise_policy
from frs_steering.model import FlowMatchingPolicy
from frs_steering.observation import (
    BuiltReference,
    ObservationError,
    ReferenceSettings,
    StampedObservation,
    build_observation,
    build_reference,
    ee_path,
    instruction_embedding,
    joint_sample,
    method_and_params,
    padded_real,
    reference_cosine,
    scene_sample,
)
from frs_steering.package_data import shipped_checkpoint
from frs_steering.reasoning import BASE_FRAME
from frs_steering.ros_messages import path_markers
from frs_steering.steer import SteerResult, available_methods, steer

PACKAGE = "frs_steering"
DEFAULT_DIM_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper", "pad0")
MARKER_COLOURS = {  # namespace -> RGBA
    "reference": (1.0, 0.75, 0.0, 1.0),
    "refined": (0.1, 0.85, 0.2, 1.0),
    "unsteered": (0.55, 0.55, 0.9, 0.8),
}
LATCHED_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
RELIABLE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10
)
Result = SteerChunk.Result


class GoalRejected(Exception):
    """The goal cannot be served; ``str(err)`` is the reason sent back to the client."""


class _Canceled(Exception):
    pass


class _Preempted(Exception):
    pass


# ---------------------------------------------------------------------------- observations


class StampedBuffer:
    """The last ``size`` samples in arrival order, looked up by stamp (thread-safe)."""

    def __init__(self, size: int) -> None:
        self._items: deque = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, item) -> None:  # noqa: ANN001 - JointSample or SceneSample
        with self._lock:
            self._items.append(item)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def nearest(self, stamp_ns: int | None, tolerance_ns: int):  # noqa: ANN201
        """The sample closest to ``stamp_ns`` within the tolerance (None: the newest), or None."""
        with self._lock:
            items = list(self._items)
        if not items:
            return None
        if stamp_ns is None:
            return max(items, key=lambda s: s.stamp_ns)
        best = min(items, key=lambda s: abs(s.stamp_ns - stamp_ns))
        return best if abs(best.stamp_ns - stamp_ns) <= tolerance_ns else None

    def span(self) -> tuple[int, int] | None:
        with self._lock:
            stamps = [s.stamp_ns for s in self._items]
        return (min(stamps), max(stamps)) if stamps else None


# ---------------------------------------------------------------------------- the node


class SteeringNode(LifecycleNode):
    """Lifecycle node serving ``frs/steer_chunk`` (see the module docstring)."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003 - rclpy Node keyword arguments
        super().__init__("steering", **kwargs)
        self._declare_parameters()
        self._group = ReentrantCallbackGroup()
        self._goal_lock = threading.Lock()
        self._jobs: ThreadPoolExecutor | None = None  # the one compute worker, made in configure
        self._instruction_lock = threading.Lock()
        self._current_goal: ServerGoalHandle | None = None
        self._active = False
        self._policy: FlowMatchingPolicy | None = None
        self._kinematics = None
        self._embed = None
        self._instruction: tuple[str, torch.Tensor] | None = None
        self._joints = StampedBuffer(1)
        self._scenes = StampedBuffer(1)
        self._entities: list = []  # subscriptions, publishers, action server made in configure
        self._action_server: ActionServer | None = None

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        def floats(lo: float, hi: float) -> dict:
            return {"floating_point_range": [FloatingPointRange(from_value=lo, to_value=hi)]}

        def ints(lo: int, hi: int) -> dict:
            return {"integer_range": [IntegerRange(from_value=lo, to_value=hi, step=1)]}

        cubes = [f"{name}_cube" for name in scene.OBJECT_NAMES]
        mats = [f"{name}_mat" for name in scene.TARGET_NAMES]
        specs: list[tuple[str, object, str, bool, dict]] = [
            ("checkpoint", "", "policy checkpoint directory; empty = shipped generalist", True, {}),
            (
                "noise_policy",
                "",
                "noise-policy checkpoint (DSBC / DSRL) for method noise_policy; empty = none",
                True,
                {},
            ),
            ("device", "cpu", "torch device of the policy", True, {}),
            ("torch_threads", 1, "torch intra-op threads (1 suits small CPUs)", True, ints(1, 64)),
            ("autostart", True, "configure and activate on start-up", True, {}),
            ("frame_id", BASE_FRAME, "robot base frame of Cartesian actions", True, {}),
            ("action_space", "ee_delta", "action_space of returned chunks", True, {}),
            ("dim_names", list(DEFAULT_DIM_NAMES), "one name per policy action dim", True, {}),
            ("control_dt", 0.1, "seconds between chunk rows", True, floats(1e-3, 1.0)),
            (
                "max_translation",
                0.05,
                "EE translation of one row at magnitude 1.0 (m)",
                True,
                floats(1e-4, 1.0),
            ),
            ("arm_joints", [f"fr3_joint{i}" for i in range(1, 8)], "arm joint names", True, {}),
            (
                "finger_joints",
                ["fr3_finger_joint1", "fr3_finger_joint2"],
                "finger joint names (opening = sum / 0.08 m)",
                True,
                {},
            ),
            ("object_names", cubes, "frs/object_states names of the cubes, state order", True, {}),
            ("target_names", mats, "frs/object_states names of the mats, state order", True, {}),
            (
                "buffer_size",
                200,
                "joint / object samples kept for stamp lookup",
                True,
                ints(1, 10000),
            ),
            (
                "stamp_tolerance",
                0.005,
                "s; a buffered sample matches a requested stamp this close",
                False,
                floats(0.0, 1.0),
            ),
            (
                "max_observation_age",
                0.5,
                "s; older observations are rejected as stale",
                False,
                floats(0.0, 60.0),
            ),
            (
                "observation_wait",
                0.05,
                "s to wait for a requested stamp newer than the buffer (goal overtook it)",
                False,
                floats(0.0, 1.0),
            ),
            ("commanded_rows", 0, "rows the direction commands; 0 = all", False, ints(0, 1000)),
            ("command_rotation", False, "also command zero rotation", False, {}),
            ("max_num_steps", 1000, "largest num_steps a goal may ask for", False, ints(1, 100000)),
            ("max_samples", 64, "largest num_samples (sample_rank)", False, ints(1, 4096)),
            ("include_unsteered", True, "also sample an unsteered chunk", False, {}),
            ("round_trip", False, "measure the reversal round-trip error (+K NFE)", False, {}),
            ("publish_feedback", True, "action feedback during integration", False, {}),
            (
                "feedback_period",
                0.02,
                "s between feedback messages (also sent at each phase's first and last step); "
                "0 = every step",
                False,
                floats(0.0, 10.0),
            ),
            ("publish_markers", True, "EE paths on frs/markers", False, {}),
            (
                "publish_record",
                True,
                "one frs_msgs/SteeringRecord per served goal on frs/steering/record (bags)",
                False,
                {},
            ),
        ]
        declare_described(
            self, ((n, d, text, {**extra, "read_only": ro}) for n, d, text, ro, extra in specs)
        )
        declare_described(self, [RESULT_TIMEOUT])

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
            f"configured: policy {self._checkpoint}, chunk {spec.horizon}x{spec.dim} "
            f"(real {spec.num_real}), {spec.num_steps} steps, methods {list(available_methods())}"
        )
        return TransitionCallbackReturn.SUCCESS

    def _load(self) -> None:
        torch.set_num_threads(int(self._param("torch_threads")))
        checkpoint = str(self._param("checkpoint")) or str(shipped_checkpoint())
        self._checkpoint = checkpoint
        if not Path(checkpoint).is_dir():
            raise CheckpointError(f"checkpoint directory {checkpoint} does not exist")
        policy = load_policy(checkpoint, device=str(self._param("device")))
        config = policy.config
        if config.state_dim != STATE_DIM:
            raise CheckpointError(
                f"checkpoint {checkpoint} expects state_dim {config.state_dim}; this node builds "
                f"the {STATE_DIM}-d tabletop state"
            )
        dim_names = list(self._param("dim_names"))
        if len(dim_names) != policy.spec.dim:
            raise ValueError(
                f"dim_names has {len(dim_names)} names, the policy has {policy.spec.dim} dims"
            )
        objects, targets = list(self._param("object_names")), list(self._param("target_names"))
        if len(objects) != len(scene.OBJECT_NAMES) or len(targets) != len(scene.TARGET_NAMES):
            raise ValueError(
                f"need {len(scene.OBJECT_NAMES)} object_names and {len(scene.TARGET_NAMES)} "
                f"target_names, got {objects} and {targets}"
            )
        if len(self._param("arm_joints")) != 7 or len(self._param("finger_joints")) != 2:
            raise ValueError("arm_joints needs 7 names and finger_joints 2")
        from frs_control.kinematics import ArmKinematics  # compiles the MuJoCo Panda

        self._kinematics = ArmKinematics()
        self._kinematics_lock = threading.Lock()
        self._embed = None
        if config.instruction_dim:
            from frs_sim.instructions import EMBEDDING_DIM, embed_instruction

            if config.instruction_dim != EMBEDDING_DIM:
                raise CheckpointError(
                    f"checkpoint expects {config.instruction_dim}-d instructions; the MiniLM "
                    f"encoder gives {EMBEDDING_DIM}"
                )
            embed_instruction("warm-up")  # load the encoder now, not on the first instruction
            self._embed = embed_instruction
        self._noise_policy = self._load_noise_policy(policy)
        self._checkpoint_sha256 = _weights_sha256(checkpoint)
        self._dim_names = dim_names
        self._policy = policy

    def _load_noise_policy(self, policy: FlowMatchingPolicy) -> NoisePolicy | None:
        """The ``noise_policy`` checkpoint, checked against the flow policy's inputs/outputs."""
        path = str(self._param("noise_policy"))
        if not path:
            return None
        net = load_noise_policy(path, device=str(self._param("device")))
        wanted = {"state": policy.config.state_dim}
        if policy.config.instruction_dim:
            wanted["instruction"] = policy.config.instruction_dim
        if dict(net.config.observation_dims) != wanted:
            raise CheckpointError(
                f"noise policy {path} reads {dict(net.config.observation_dims)}; the flow policy "
                f"observes {wanted}"
            )
        if (net.config.horizon, net.config.dim) != tuple(policy.spec.chunk_shape):
            raise CheckpointError(
                f"noise policy {path} makes {net.config.horizon}x{net.config.dim} noise; the flow "
                f"policy needs {tuple(policy.spec.chunk_shape)}"
            )
        self.get_logger().info(f"noise policy loaded from {path}")
        return net

    def _open_interfaces(self) -> None:
        size = int(self._param("buffer_size"))
        self._joints, self._scenes = StampedBuffer(size), StampedBuffer(size)
        self._jobs = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="frs_steer",
            initializer=torch.set_num_threads,  # intra-op threads are set per calling thread
            initargs=(int(self._param("torch_threads")),),
        )
        group = self._group
        self._entities = [
            self.create_subscription(
                JointState,
                "joint_states",
                self._on_joints,
                qos_profile_sensor_data,
                callback_group=group,
            ),
            self.create_subscription(
                ObjectStates,
                "frs/object_states",
                self._on_objects,
                qos_profile_sensor_data,
                callback_group=group,
            ),
            self.create_subscription(
                String, "frs/instruction", self._on_instruction, LATCHED_QOS, callback_group=group
            ),
        ]
        self._diagnostics_pub = self.create_lifecycle_publisher(
            SteeringDiagnostics, "frs/diagnostics", RELIABLE_QOS
        )
        self._markers_pub = self.create_lifecycle_publisher(
            MarkerArray, "frs/markers", RELIABLE_QOS
        )
        self._record_pub = self.create_lifecycle_publisher(
            SteeringRecord, "frs/steering/record", RELIABLE_QOS
        )
        self._action_server = ActionServer(
            self,
            SteerChunk,
            "frs/steer_chunk",
            execute_callback=self._execute,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            handle_accepted_callback=self._on_accepted,
            cancel_callback=lambda _handle: CancelResponse.ACCEPT,
            callback_group=group,
            result_timeout=float(self._param("result_timeout")),
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

    def _close_interfaces(self) -> None:
        jobs, self._jobs = self._jobs, None
        if jobs is not None:  # queued goals still run: inactive, they are rejected at once
            jobs.shutdown(wait=True)
        if self._action_server is not None:
            self._action_server.destroy()
            self._action_server = None
        for entity in self._entities:
            self.destroy_subscription(entity)
        self._entities = []
        for name in ("_diagnostics_pub", "_markers_pub", "_record_pub"):
            publisher = getattr(self, name, None)
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
                setattr(self, name, None)
        self._policy = None
        self._instruction = None

    # ------------------------------------------------------------------ topics
    def _on_joints(self, msg: JointState) -> None:
        arm_names, finger_names = self._param("arm_joints"), self._param("finger_joints")
        sample = joint_sample(msg, arm_names, finger_names)
        if sample is None:
            self.get_logger().warning(
                f"joint_states lacks some of {arm_names + finger_names} or is not finite; ignored",
                throttle_duration_sec=5.0,
            )
            return
        self._joints.add(sample)

    def _on_objects(self, msg: ObjectStates) -> None:
        frame = self._param("frame_id")
        if msg.header.frame_id not in ("", frame):
            self.get_logger().warning(
                f"frs/object_states in frame {msg.header.frame_id!r}, expected {frame!r} "
                "(no tf2 here); ignored",
                throttle_duration_sec=5.0,
            )
            return
        try:
            sample = scene_sample(msg, self._param("object_names"), self._param("target_names"))
        except ObservationError as error:
            self.get_logger().warning(f"{error}; ignored", throttle_duration_sec=5.0)
            return
        self._scenes.add(sample)

    def _on_instruction(self, msg: String) -> None:
        text = msg.data.strip()
        with self._instruction_lock:
            if self._instruction is not None and self._instruction[0] == text:
                return
        embedding = instruction_embedding(text, self._embed)
        with self._instruction_lock:
            self._instruction = (text, embedding)
        self.get_logger().info(f"instruction: {text!r}")

    def _observation(self, stamp_ns: int) -> StampedObservation:
        """The buffered observation for ``stamp_ns`` (0 = latest); GoalRejected if none fits."""
        tolerance = int(float(self._param("stamp_tolerance")) * 1e9)
        joints = self._joints.nearest(stamp_ns or None, tolerance)
        wait_until = time.monotonic() + float(self._param("observation_wait"))
        while joints is None and stamp_ns and time.monotonic() < wait_until:
            span = self._joints.span()  # the goal may overtake its own joint_states: wait
            if span is not None and span[1] > stamp_ns + tolerance:
                break
            time.sleep(0.001)
            joints = self._joints.nearest(stamp_ns, tolerance)
        if joints is None:
            span = self._joints.span()
            if span is None:
                raise GoalRejected("no observation: nothing received on joint_states yet")
            raise GoalRejected(
                f"no observation at stamp {stamp_ns * 1e-9:.6f} s (+/- {tolerance * 1e-9:g} s); "
                f"joint_states buffer spans {span[0] * 1e-9:.6f}..{span[1] * 1e-9:.6f} s"
            )
        age = (self.get_clock().now().nanoseconds - joints.stamp_ns) * 1e-9
        max_age = float(self._param("max_observation_age"))
        if age > max_age:
            raise GoalRejected(
                f"stale observation: stamp {joints.stamp_ns * 1e-9:.6f} s is {age:.3f} s old "
                f"(max_observation_age {max_age:g} s)"
            )
        scene = self._scenes.nearest(joints.stamp_ns, tolerance)
        if scene is None:
            raise GoalRejected(
                f"no observation: no frs/object_states within {tolerance * 1e-9:g} s of the "
                f"joint_states stamp {joints.stamp_ns * 1e-9:.6f} s"
            )
        with self._instruction_lock:
            instruction = self._instruction
        text, embedding = instruction if instruction is not None else ("", None)
        try:
            with self._kinematics_lock:
                return build_observation(
                    joints,
                    scene,
                    embedding,
                    self._kinematics,
                    needs_instruction=self._embed is not None,
                    instruction_text=text,
                )
        except ObservationError as error:
            raise GoalRejected(str(error)) from None

    # ------------------------------------------------------------------ goals
    def _on_accepted(self, goal_handle: ServerGoalHandle) -> None:
        with self._goal_lock:
            self._current_goal = goal_handle  # an older goal sees this between steps
        goal_handle.execute()

    async def _execute(self, goal_handle: ServerGoalHandle) -> Result:
        """Hand the goal to the compute worker and wait without holding the executor.

        The executor thread stays free for joint states, cancel requests and newer goals while
        the worker steers; the goal's state transition happens back here, on the executor.
        """
        jobs = self._jobs
        if jobs is None:
            reason = "the steering node is not active"
            return self._finish(goal_handle, Result.OUTCOME_REJECTED, reason)
        done = waking_future(self)

        def job() -> None:
            try:
                done.set_result(self._serve(goal_handle))
            except BaseException as error:  # noqa: BLE001 - raised again by ``await done``
                done.set_exception(error)

        jobs.submit(job)
        outcome: _Served = await done
        if outcome.transition == "succeed":
            goal_handle.succeed()
            if outcome.publish is not None:
                jobs.submit(outcome.publish)
        elif outcome.transition == "canceled":
            goal_handle.canceled()
        elif goal_handle.is_active:
            goal_handle.abort()
        return outcome.result

    def _serve(self, goal_handle: ServerGoalHandle) -> _Served:
        """Steer one goal on the worker thread."""
        started = time.perf_counter()
        goal: SteerChunk.Goal = goal_handle.request
        try:
            if not self._active or self._policy is None:
                raise GoalRejected("the steering node is not active")
            request = self._check_goal(goal)
            prepare_start = time.perf_counter()
            observation = self._observation(stamp_to_ns(goal.observation_stamp))
            built = self._reference(goal, observation)
            reference, mask, reference_real = built.chunk, built.mask, built.real
            prepare_s = time.perf_counter() - prepare_start
        except (GoalRejected, MessageError) as error:
            return _Served("abort", Result(outcome=Result.OUTCOME_REJECTED, reason=str(error)))

        def on_step(phase: str, step: int, total: int) -> None:
            if goal_handle.is_cancel_requested:
                raise _Canceled
            if self._current_goal is not goal_handle:
                raise _Preempted
            if not self._active:
                raise _Canceled
            now = time.monotonic()
            boundary = phase != last_feedback[0] or step + 1 == total
            if publish_feedback and (boundary or now - last_feedback[1] >= feedback_period):
                last_feedback[:] = [phase, now]
                goal_handle.publish_feedback(
                    SteerChunk.Feedback(phase=phase, step=step + 1, total_steps=total)
                )

        publish_feedback = bool(self._param("publish_feedback"))
        feedback_period = float(self._param("feedback_period"))
        last_feedback: list = ["", -math.inf]  # phase and time of the last feedback sent
        try:
            if self._current_goal is not goal_handle:
                raise _Preempted
            result = steer(
                self._policy,
                reference,
                observation=observation.policy_input,
                method=request.method,
                params=request.params,
                mask=mask,
                reference_normalized=built.normalized,
                generator=request.generator,
                num_steps=request.num_steps,
                solver=request.solver,
                include_base_sample=bool(self._param("include_unsteered")),
                round_trip=bool(self._param("round_trip")),
                step_callback=on_step,
            )
        except _Canceled:
            reason = "canceled by the client" if self._active else "node deactivated"
            transition = "canceled" if goal_handle.is_cancel_requested else "abort"
            return _Served(transition, Result(outcome=Result.OUTCOME_CANCELED, reason=reason))
        except _Preempted:
            reason = "preempted by a newer goal"
            return _Served("abort", Result(outcome=Result.OUTCOME_PREEMPTED, reason=reason))
        except (ValueError, RuntimeError) as error:
            self.get_logger().error(f"steering failed: {error}")
            reason = f"steering failed: {error}"
            return _Served("abort", Result(outcome=Result.OUTCOME_FAILED, reason=reason))

        msg = self._result_msg(result, request, observation, reference_real, prepare_s, started)
        publish = functools.partial(
            self._publish_extras, goal, request, observation, result, reference_real, msg
        )
        return _Served("succeed", msg, publish)

    def _publish_extras(
        self,
        goal: SteerChunk.Goal,
        request: SteerRequest,
        observation: StampedObservation,
        result: SteerResult,
        reference_real: torch.Tensor | None,
        msg: Result,
    ) -> None:
        """Diagnostics, rviz markers and the replay record: after the result, off its path."""
        if not self._active or self._diagnostics_pub is None:
            return
        self._diagnostics_pub.publish(msg.diagnostics)
        if self._param("publish_markers"):
            self._markers_pub.publish(self._markers(result, observation, reference_real))
        if self._param("publish_record"):
            self._record_pub.publish(self._record_msg(goal, request, observation, msg))

    @staticmethod
    def _finish(goal_handle: ServerGoalHandle, outcome: int, reason: str) -> Result:
        if goal_handle.is_active:
            goal_handle.abort()
        return Result(outcome=outcome, reason=reason)

    def _check_goal(self, goal: SteerChunk.Goal) -> SteerRequest:
        """Method, parameters, steps, solver and seed of a goal; GoalRejected names a bad one."""
        method = goal.method or SteerChunk.Goal.METHOD_FRS
        if method not in available_methods():
            raise GoalRejected(f"unknown method {method!r}; available: {list(available_methods())}")
        max_steps = int(self._param("max_num_steps"))
        if goal.num_steps > max_steps:
            raise GoalRejected(f"num_steps {goal.num_steps} exceeds max_num_steps {max_steps}")
        try:
            solver = as_solver(goal.solver or "euler")
            method, params = method_and_params(
                method,
                defer=goal.reference.defer,
                noise_scale=goal.noise_scale,
                partial_time=goal.partial_time,
                num_samples=goal.num_samples,
                max_samples=int(self._param("max_samples")),
            )
        except ValueError as error:
            raise GoalRejected(str(error)) from None
        if method == SteerChunk.Goal.METHOD_NOISE_POLICY:
            if self._noise_policy is None:
                raise GoalRejected(
                    "method noise_policy needs a noise-policy checkpoint: set the noise_policy "
                    "parameter (trained by frs_sim.studies.dsbc or frs_sim.studies.dsrl)"
                )
            params["noise_policy"] = self._noise_policy
        # A negative seed draws one here, so the call is still random but can be replayed.
        seed = int(goal.seed) if goal.seed >= 0 else int.from_bytes(os.urandom(7), "little")
        generator = torch.Generator(device=str(self._param("device"))).manual_seed(seed)
        return SteerRequest(
            method=method,
            params=params,
            num_steps=goal.num_steps or None,
            solver=solver.value,
            generator=generator,
            seed=seed,
        )

    def _reference_settings(self) -> ReferenceSettings:
        return ReferenceSettings(
            frame_id=str(self._param("frame_id")),
            action_space=str(self._param("action_space")),
            max_translation=float(self._param("max_translation")),
            commanded_rows=int(self._param("commanded_rows")),
            command_rotation=bool(self._param("command_rotation")),
        )

    def _reference(self, goal: SteerChunk.Goal, observation: StampedObservation) -> BuiltReference:
        """Reference, mask and real-unit reference in the POLICY's action space."""
        try:
            return build_reference(
                self._policy.spec,
                self._reference_settings(),
                goal.reference,
                observation.gripper_opening,
            )
        except ObservationError as error:
            raise GoalRejected(str(error)) from None

    # ------------------------------------------------------------------ results
    def _padded_real(self, real: torch.Tensor) -> np.ndarray:
        return padded_real(self._policy.spec, real)

    def _result_msg(
        self,
        result: SteerResult,
        request: SteerRequest,
        observation: StampedObservation,
        reference_real: torch.Tensor | None,
        prepare_s: float,
        started: float,
    ) -> Result:
        stamp = ns_to_stamp(observation.stamp_ns)
        frame, space = self._param("frame_id"), self._param("action_space")
        dt = float(self._param("control_dt"))

        def chunk(rows: np.ndarray, normalized: bool):  # noqa: ANN202
            return chunk_to_msg(
                rows,
                stamp=stamp,
                frame_id=frame,
                action_space=space,
                dt=dt,
                dim_names=self._dim_names,
                normalized=normalized,
            )

        msg = Result(outcome=Result.OUTCOME_SUCCEEDED)
        msg.refined = chunk(self._padded_real(result.chunk_real[0]), False)
        if reference_real is not None:
            msg.reference = chunk(result.reference[0].cpu().numpy(), True)
        if result.noise is not None:
            msg.noise = chunk(result.noise[0].cpu().numpy(), True)
        if result.base_chunk_real is not None:
            msg.unsteered = chunk(self._padded_real(result.base_chunk_real[0]), False)
        msg.diagnostics = self._diagnostics(result, reference_real is not None, prepare_s, started)
        msg.diagnostics.header.stamp = stamp
        msg.diagnostics.header.frame_id = frame
        return msg

    @staticmethod
    def _diagnostics(
        result: SteerResult, has_reference: bool, prepare_s: float, started: float
    ) -> SteeringDiagnostics:
        diag = result.diagnostics
        nan = float("nan")

        def first(value: torch.Tensor | None) -> float:
            return nan if value is None else float(value[0])

        cosine = nan
        if has_reference:
            cosine = reference_cosine(result.chunk[0], result.reference[0], result.steered[0])
        timings = [PhaseTiming(phase="observation", duration_ms=prepare_s * 1e3)]
        timings += [
            PhaseTiming(phase=phase, duration_ms=seconds * 1e3)
            for phase, seconds in diag.timings.items()
            if phase != "total"
        ]
        return SteeringDiagnostics(
            method=diag.method,
            solver=diag.solver,
            num_steps=diag.num_steps,
            noise_norm_ratio=first(diag.noise_rms),
            noise_log_density=first(diag.noise_log_density),
            round_trip_error=first(diag.round_trip_error),
            reference_distance=first(diag.reference_distance) if has_reference else nan,
            reference_cosine=cosine,
            nfe=diag.nfe,
            timings=timings,
            total_ms=(time.perf_counter() - started) * 1e3,
        )

    def _record_msg(
        self,
        goal: SteerChunk.Goal,
        request: SteerRequest,
        observation: StampedObservation,
        result: Result,
    ) -> SteeringRecord:
        """Everything needed to replay this call offline (see frs_msgs/SteeringRecord)."""
        msg = SteeringRecord(
            requested_method=goal.method,
            num_steps=goal.num_steps,
            solver=goal.solver,
            noise_scale=goal.noise_scale,
            partial_time=goal.partial_time,
            num_samples=goal.num_samples,
            requested_seed=goal.seed,
            reference=goal.reference,
            method=request.method,
            seed=request.seed,
            scene_stamp=ns_to_stamp(observation.scene_stamp_ns),
            instruction=observation.instruction,
            max_translation=float(self._param("max_translation")),
            commanded_rows=int(self._param("commanded_rows")),
            command_rotation=bool(self._param("command_rotation")),
            include_unsteered=bool(self._param("include_unsteered")),
            checkpoint_sha256=self._checkpoint_sha256,
            refined=result.refined,
            reference_chunk=result.reference,
            noise=result.noise,
            unsteered=result.unsteered,
            diagnostics=result.diagnostics,
        )
        msg.header.stamp = ns_to_stamp(observation.stamp_ns)
        msg.header.frame_id = str(self._param("frame_id"))
        return msg

    def _markers(
        self,
        result: SteerResult,
        observation: StampedObservation,
        reference_real: torch.Tensor | None,
    ) -> MarkerArray:
        """EE paths (line strips from the current EE, accumulating translation rows)."""
        paths = {
            "reference": reference_real,
            "refined": result.chunk_real[0],
            "unsteered": None if result.base_chunk_real is None else result.base_chunk_real[0],
        }
        translation = self._reference_settings().layout().translation
        return path_markers(
            {
                namespace: (
                    None if real is None else ee_path(observation.ee_position, real, translation),
                    MARKER_COLOURS[namespace],
                )
                for namespace, real in paths.items()
            },
            stamp=ns_to_stamp(observation.stamp_ns),
            frame_id=self._param("frame_id"),
        )


@dataclass(frozen=True)
class _Served:
    """How the worker ended a goal: the goal-state transition, the result, what to publish after."""

    transition: str  # "succeed" | "abort" | "canceled"
    result: Result
    publish: Callable[[], None] | None = None


@dataclass(frozen=True)
class SteerRequest:
    """A goal's checked steering settings, in :func:`steer`'s terms."""

    method: str
    params: dict
    num_steps: int | None
    solver: str
    generator: torch.Generator | None
    seed: int = -1


def _weights_sha256(checkpoint: str) -> str:
    """The weights' SHA-256 recorded in a checkpoint's config.json ("" if absent)."""
    try:
        document = json.loads((Path(checkpoint) / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    return str(document.get("weights_sha256", "")) if isinstance(document, dict) else ""


def main(args: list[str] | None = None) -> None:
    """Run the steering node; with ``autostart`` it configures and activates itself."""
    rclpy.init(args=args)
    node = SteeringNode()
    executor = SingleThreadedExecutor()  # ROS I/O; steering runs on the node's worker thread
    executor.add_node(node)
    code = 0
    try:
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal("could not configure; exiting")
                code = 1
            else:
                node.trigger_activate()
        if code == 0:
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
