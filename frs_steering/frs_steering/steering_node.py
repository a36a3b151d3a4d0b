"""Steering node: the ``frs/steer_chunk`` action server in front of ``steer.steer``.

A lifecycle node (ros2/demos ``lifecycle_py``): ``configure`` loads the policy checkpoint and the
instruction encoder and opens the topics and the action server; ``activate`` starts serving
goals and publishing; ``deactivate`` stops any running goal. With ``autostart`` (default) it
configures and activates itself, since launch-free installs have no lifecycle manager.

Observations come from the robot's topics: ``joint_states`` (arm + finger joints) and
``frs/object_states`` (same stamp per tick on the simulated robot) go into short stamped buffers;
a goal conditions on the buffered observation whose stamp matches ``observation_stamp`` (zero =
latest). The policy state is :func:`frs_steering.sim.env.tabletop_state` of the EE pose (FK of
the joints with :class:`ArmKinematics`), gripper opening, joints, cubes and mats, plus the
MiniLM embedding of the latest ``frs/instruction`` (embedded once per new text).

Goal checks: rclpy's ``goal_callback`` can only say accept/reject, with no reason, so every
goal is accepted and a bad one is then *aborted* with ``OUTCOME_REJECTED`` and a ``reason``
naming the problem. A newer goal preempts an older one (``OUTCOME_PREEMPTED``); cancel and
preemption take effect between integration steps.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rclpy
import torch
from geometry_msgs.msg import Point
from rcl_interfaces.msg import FloatingPointRange, IntegerRange
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import JointState
from std_msgs.msg import ColorRGBA, String
from visualization_msgs.msg import Marker, MarkerArray

from frs_msgs.action import SteerChunk
from frs_msgs.msg import ObjectStates, PhaseTiming, SteeringDiagnostics
from frs_steering.checkpoint import CheckpointError, load_policy
from frs_steering.integrate import as_solver
from frs_steering.model import FlowMatchingPolicy
from frs_steering.package_data import shipped_checkpoint
from frs_steering.reasoning import BASE_FRAME
from frs_steering.reference import CartesianLayout, cartesian_reference
from frs_steering.ros_messages import (
    MessageError,
    chunk_from_msg,
    chunk_to_msg,
    ns_to_stamp,
    proposal_from_msg,
    stamp_to_ns,
)
from frs_steering.ros_params import declare_described
from frs_steering.sim import scene
from frs_steering.sim.env import STATE_DIM, tabletop_state, yaw_of_quaternion, yaw_of_rotation
from frs_steering.steer import SteerResult, available_methods, steer

PACKAGE = "frs_steering"
FINGER_OPEN_SUM = 0.08  # m; finger joint positions summed at a fully open gripper
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


@dataclass(frozen=True)
class JointSample:
    stamp_ns: int
    arm: np.ndarray  # (7,) rad
    gripper_opening: float  # [0, 1], 1 = open


@dataclass(frozen=True)
class SceneSample:
    stamp_ns: int
    objects: np.ndarray  # (n, 3) m, base frame
    object_yaws: np.ndarray  # (n,) rad
    targets: np.ndarray  # (m, 3) m, base frame


@dataclass(frozen=True)
class StampedObservation:
    """What one goal conditions on: the policy observation, its stamp and the EE position."""

    stamp_ns: int
    policy_input: dict[str, torch.Tensor]
    ee_position: np.ndarray
    gripper_opening: float


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
        self._compute_lock = threading.Lock()
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
            ("publish_feedback", True, "action feedback at every integration step", False, {}),
            ("publish_markers", True, "EE paths on frs/markers", False, {}),
        ]
        declare_described(
            self, ((n, d, text, {**extra, "read_only": ro}) for n, d, text, ro, extra in specs)
        )

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
        from frs_steering.kinematics import ArmKinematics  # compiles the MuJoCo Panda

        self._kinematics = ArmKinematics()
        self._kinematics_lock = threading.Lock()
        self._embed = None
        if config.instruction_dim:
            from frs_steering.sim.instructions import EMBEDDING_DIM, embed_instruction

            if config.instruction_dim != EMBEDDING_DIM:
                raise CheckpointError(
                    f"checkpoint expects {config.instruction_dim}-d instructions; the MiniLM "
                    f"encoder gives {EMBEDDING_DIM}"
                )
            embed_instruction("warm-up")  # load the encoder now, not on the first instruction
            self._embed = embed_instruction
        self._layout = CartesianLayout(max_translation=float(self._param("max_translation")))
        self._dim_names = dim_names
        self._policy = policy

    def _open_interfaces(self) -> None:
        size = int(self._param("buffer_size"))
        self._joints, self._scenes = StampedBuffer(size), StampedBuffer(size)
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
        self._action_server = ActionServer(
            self,
            SteerChunk,
            "frs/steer_chunk",
            execute_callback=self._execute,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            handle_accepted_callback=self._on_accepted,
            cancel_callback=lambda _handle: CancelResponse.ACCEPT,
            callback_group=group,
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
        if self._action_server is not None:
            self._action_server.destroy()
            self._action_server = None
        for entity in self._entities:
            self.destroy_subscription(entity)
        self._entities = []
        for name in ("_diagnostics_pub", "_markers_pub"):
            publisher = getattr(self, name, None)
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
                setattr(self, name, None)
        self._policy = None
        self._instruction = None

    # ------------------------------------------------------------------ topics
    def _on_joints(self, msg: JointState) -> None:
        index = {name: i for i, name in enumerate(msg.name)}
        arm_names, finger_names = self._param("arm_joints"), self._param("finger_joints")
        try:
            arm = np.array([msg.position[index[n]] for n in arm_names], dtype=np.float64)
            fingers = sum(msg.position[index[n]] for n in finger_names)
        except (KeyError, IndexError):
            self.get_logger().warning(
                f"joint_states lacks some of {arm_names + finger_names}; ignored",
                throttle_duration_sec=5.0,
            )
            return
        if not np.all(np.isfinite(arm)) or not math.isfinite(fingers):
            return
        opening = float(np.clip(fingers / FINGER_OPEN_SUM, 0.0, 1.0))
        self._joints.add(JointSample(stamp_to_ns(msg.header.stamp), arm, opening))

    def _on_objects(self, msg: ObjectStates) -> None:
        frame = self._param("frame_id")
        if msg.header.frame_id not in ("", frame):
            self.get_logger().warning(
                f"frs/object_states in frame {msg.header.frame_id!r}, expected {frame!r} "
                "(no tf2 here); ignored",
                throttle_duration_sec=5.0,
            )
            return
        poses = dict(zip(msg.names, msg.poses, strict=False))
        try:
            objects = [poses[n] for n in self._param("object_names")]
            targets = [poses[n] for n in self._param("target_names")]
        except KeyError as missing:
            self.get_logger().warning(
                f"frs/object_states lacks {missing}; ignored", throttle_duration_sec=5.0
            )
            return
        self._scenes.add(
            SceneSample(
                stamp_ns=stamp_to_ns(msg.header.stamp),
                objects=np.array([[p.position.x, p.position.y, p.position.z] for p in objects]),
                object_yaws=np.array(
                    [
                        yaw_of_quaternion(
                            (p.orientation.w, p.orientation.x, p.orientation.y, p.orientation.z)
                        )
                        for p in objects
                    ]
                ),
                targets=np.array([[p.position.x, p.position.y, p.position.z] for p in targets]),
            )
        )

    def _on_instruction(self, msg: String) -> None:
        text = msg.data.strip()
        with self._instruction_lock:
            if self._instruction is not None and self._instruction[0] == text:
                return
        embedding = None
        if self._embed is not None:
            vector = np.clip(self._embed(text), -1.0, 1.0)  # as the environment does
            embedding = torch.as_tensor(vector, dtype=torch.float32).reshape(1, -1)
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
        scene_sample = self._scenes.nearest(joints.stamp_ns, tolerance)
        if scene_sample is None:
            raise GoalRejected(
                f"no observation: no frs/object_states within {tolerance * 1e-9:g} s of the "
                f"joint_states stamp {joints.stamp_ns * 1e-9:.6f} s"
            )
        with self._kinematics_lock:
            ee_position, ee_rotation = self._kinematics.forward(joints.arm)
        state = tabletop_state(
            ee_position,
            yaw_of_rotation(ee_rotation),
            joints.gripper_opening,
            joints.arm,
            scene_sample.objects,
            scene_sample.object_yaws,
            scene_sample.targets,
        )
        policy_input = {"state": torch.from_numpy(state).reshape(1, -1)}
        if self._embed is not None:
            with self._instruction_lock:
                instruction = self._instruction
            if instruction is None:
                raise GoalRejected("no observation: no instruction received on frs/instruction")
            policy_input["instruction"] = instruction[1]
        return StampedObservation(
            joints.stamp_ns, policy_input, ee_position, joints.gripper_opening
        )

    # ------------------------------------------------------------------ goals
    def _on_accepted(self, goal_handle: ServerGoalHandle) -> None:
        with self._goal_lock:
            self._current_goal = goal_handle  # an older goal sees this between steps
        goal_handle.execute()

    def _execute(self, goal_handle: ServerGoalHandle) -> Result:
        started = time.perf_counter()
        goal: SteerChunk.Goal = goal_handle.request
        try:
            if not self._active or self._policy is None:
                raise GoalRejected("the steering node is not active")
            request = self._check_goal(goal)
            prepare_start = time.perf_counter()
            observation = self._observation(stamp_to_ns(goal.observation_stamp))
            reference, mask, reference_normalized, reference_real = self._reference(
                goal, request, observation
            )
            prepare_s = time.perf_counter() - prepare_start
        except (GoalRejected, MessageError) as error:
            return self._finish(goal_handle, Result.OUTCOME_REJECTED, str(error))

        def on_step(phase: str, step: int, total: int) -> None:
            if goal_handle.is_cancel_requested:
                raise _Canceled
            if self._current_goal is not goal_handle:
                raise _Preempted
            if not self._active:
                raise _Canceled
            if publish_feedback:
                goal_handle.publish_feedback(
                    SteerChunk.Feedback(phase=phase, step=step + 1, total_steps=total)
                )

        publish_feedback = bool(self._param("publish_feedback"))
        try:
            with self._compute_lock:
                if self._current_goal is not goal_handle:
                    raise _Preempted
                result = steer(
                    self._policy,
                    reference,
                    observation=observation.policy_input,
                    method=request.method,
                    params=request.params,
                    mask=mask,
                    reference_normalized=reference_normalized,
                    generator=request.generator,
                    num_steps=request.num_steps,
                    solver=request.solver,
                    include_base_sample=bool(self._param("include_unsteered")),
                    round_trip=bool(self._param("round_trip")),
                    step_callback=on_step,
                )
        except _Canceled:
            reason = "canceled by the client" if self._active else "node deactivated"
            if goal_handle.is_cancel_requested:
                goal_handle.canceled()
                return Result(outcome=Result.OUTCOME_CANCELED, reason=reason)
            return self._finish(goal_handle, Result.OUTCOME_CANCELED, reason)
        except _Preempted:
            return self._finish(goal_handle, Result.OUTCOME_PREEMPTED, "preempted by a newer goal")
        except (ValueError, RuntimeError) as error:
            self.get_logger().error(f"steering failed: {error}")
            return self._finish(goal_handle, Result.OUTCOME_FAILED, f"steering failed: {error}")

        msg = self._result_msg(result, request, observation, reference_real, prepare_s, started)
        goal_handle.succeed()
        self._diagnostics_pub.publish(msg.diagnostics)
        if self._param("publish_markers"):
            self._markers_pub.publish(self._markers(result, observation, reference_real))
        return msg

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
        if goal.reference.defer:
            method = SteerChunk.Goal.METHOD_BASE  # the policy acts on its own
        max_steps = int(self._param("max_num_steps"))
        if goal.num_steps > max_steps:
            raise GoalRejected(f"num_steps {goal.num_steps} exceeds max_num_steps {max_steps}")
        try:
            solver = as_solver(goal.solver or "euler")
        except ValueError as error:
            raise GoalRejected(str(error)) from None
        params: dict[str, float | int] = {}
        if method == SteerChunk.Goal.METHOD_FRS:
            if not (math.isfinite(goal.noise_scale) and 0.0 <= goal.noise_scale <= 10.0):
                raise GoalRejected(f"noise_scale must be in [0, 10], got {goal.noise_scale}")
            params["noise_scale"] = float(goal.noise_scale)
        elif method == SteerChunk.Goal.METHOD_PARTIAL_NOISING:
            if not (math.isfinite(goal.partial_time) and 0.0 <= goal.partial_time <= 1.0):
                raise GoalRejected(f"partial_time must be in (0, 1], got {goal.partial_time}")
            if goal.partial_time > 0.0:  # 0 = the method's default
                params["noise_level"] = float(goal.partial_time)
        elif method == SteerChunk.Goal.METHOD_SAMPLE_RANK:
            max_samples = int(self._param("max_samples"))
            if goal.num_samples > max_samples:
                raise GoalRejected(
                    f"num_samples {goal.num_samples} exceeds max_samples {max_samples}"
                )
            if goal.num_samples > 0:  # 0 = the method's default
                params["num_samples"] = int(goal.num_samples)
        generator = None
        if goal.seed >= 0:
            generator = torch.Generator(device=str(self._param("device"))).manual_seed(goal.seed)
        return SteerRequest(
            method=method,
            params=params,
            num_steps=goal.num_steps or None,
            solver=solver.value,
            generator=generator,
        )

    def _reference(
        self, goal: SteerChunk.Goal, request: SteerRequest, observation: StampedObservation
    ) -> tuple[torch.Tensor, torch.Tensor | None, bool, torch.Tensor | None]:
        """Reference, mask, whether both are in normalized space, and the real-unit reference
        (None for a deferral), all in the POLICY's action space."""
        spec = self._policy.spec
        coarse = goal.reference
        frame = self._param("frame_id")
        if coarse.header.frame_id not in ("", frame):
            raise GoalRejected(
                f"reference.header.frame_id {coarse.header.frame_id!r} is not {frame!r} "
                "(no tf2 in this node)"
            )
        if coarse.defer:
            return torch.zeros(spec.chunk_shape), None, True, None
        if len(coarse.chunk.data):
            return self._full_reference(coarse)
        proposal = proposal_from_msg(coarse)
        layout = self._layout
        opening = observation.gripper_opening  # 1 = open; the action's gripper is 0 = open
        current = layout.gripper_open + (1.0 - opening) * (
            layout.gripper_closed - layout.gripper_open
        )
        rows = int(self._param("commanded_rows"))
        try:
            built = cartesian_reference(
                spec,
                layout,
                proposal,
                current_gripper=current,
                commanded_rows=min(rows, spec.horizon) or None,
                command_rotation=bool(self._param("command_rotation")),
            )
        except ValueError as error:
            raise GoalRejected(f"reference: {error}") from None
        return built.chunk, built.mask, True, built.real

    def _full_reference(self, coarse) -> tuple:  # noqa: ANN001
        """A reasoner's full reference chunk (and mask), checked against the policy's shape."""
        spec = self._policy.spec
        chunk = coarse.chunk
        space = self._param("action_space")
        if chunk.action_space not in ("", space):
            raise GoalRejected(
                f"reference.chunk.action_space {chunk.action_space!r} is not {space!r}"
            )
        rows = chunk_from_msg(chunk, "reference.chunk")
        widths = (spec.dim,) if chunk.normalized else (spec.num_real, spec.dim)
        if chunk.horizon != spec.horizon or chunk.dim not in widths:
            want = " or ".join(f"{spec.horizon}x{w}" for w in widths)
            space_name = "normalized" if chunk.normalized else "real-unit"
            raise GoalRejected(
                f"reference.chunk is {chunk.horizon}x{chunk.dim}; the policy needs {want} "
                f"({space_name})"
            )
        mask = None
        if len(coarse.mask):
            if len(coarse.mask) != rows.size:
                raise GoalRejected(
                    f"reference.mask has {len(coarse.mask)} entries, the chunk {rows.size}"
                )
            mask = torch.from_numpy(np.asarray(coarse.mask, dtype=bool).reshape(rows.shape))
        reference = torch.from_numpy(rows.copy())
        real_dims = list(spec.real_dims)
        if not chunk.normalized and chunk.dim == spec.dim and spec.has_padding:
            reference = reference[:, real_dims]  # a padded real-unit chunk: drop the padding
            mask = None if mask is None else mask[:, real_dims]
        if chunk.normalized:
            real = spec.from_policy(reference)
        else:
            real = reference
        return reference, mask, chunk.normalized, real

    # ------------------------------------------------------------------ results
    def _padded_real(self, real: torch.Tensor) -> np.ndarray:
        """Real-unit ``[horizon, num_real]`` rows placed in the policy's padded row layout."""
        spec = self._policy.spec
        rows = np.zeros(spec.chunk_shape, dtype=np.float32)
        rows[:, list(spec.real_dims)] = real.detach().cpu().numpy()
        return rows

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
            weights = result.steered[0].to(result.chunk.dtype)
            a, b = (result.chunk[0] * weights).flatten(), (result.reference[0] * weights).flatten()
            cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=0, eps=1e-12))
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
        translation = list(self._layout.translation)
        start = np.asarray(observation.ee_position, dtype=np.float64)
        markers = MarkerArray()
        for index, (namespace, real) in enumerate(paths.items()):
            marker = Marker(ns=namespace, id=index, type=Marker.LINE_STRIP)
            marker.header.stamp = ns_to_stamp(observation.stamp_ns)
            marker.header.frame_id = self._param("frame_id")
            if real is None:
                marker.action = Marker.DELETE
                markers.markers.append(marker)
                continue
            steps = real[:, translation].detach().cpu().numpy().astype(np.float64)
            path = np.vstack([start, start + np.cumsum(steps, axis=0)])
            marker.action = Marker.ADD
            marker.pose.orientation.w = 1.0
            marker.scale.x = 0.004
            r, g, b, a = MARKER_COLOURS[namespace]
            marker.color = ColorRGBA(r=r, g=g, b=b, a=a)
            marker.points = [Point(x=p[0], y=p[1], z=p[2]) for p in path.tolist()]
            markers.markers.append(marker)
        return markers


@dataclass(frozen=True)
class SteerRequest:
    """A goal's checked steering settings, in :func:`steer`'s terms."""

    method: str
    params: dict
    num_steps: int | None
    solver: str
    generator: torch.Generator | None


def main(args: list[str] | None = None) -> None:
    """Run the steering node; with ``autostart`` it configures and activates itself."""
    rclpy.init(args=args)
    node = SteeringNode()
    executor = MultiThreadedExecutor(num_threads=4)
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
