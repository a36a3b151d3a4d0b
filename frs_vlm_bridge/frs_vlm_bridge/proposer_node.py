"""Proposer node: per chunk, ask a reasoner for a coarse direction, steer it, execute it.

Loop (on its own thread, so a slow VLM never blocks the executor): take the latest observation
(``joint_states`` -> EE position by FK, ``frs/object_states``, ``frs/instruction``, optionally
``camera/image_raw``), ask the backend (``scripted`` | ``human`` | ``vlm`` | ``none``) for a
:class:`CoarseProposal`, publish it as ``frs_msgs/CoarseReference`` on ``frs/reference``, send it
to ``frs/steer_chunk`` with the observation's stamp, then send the refined chunk to
``frs/execute_chunk``. With ``plan_ahead`` (default) it does not wait for the chunk to end: it
plans the next one so that it reaches the controller (measured latency, 90th percentile) just
before the current chunk's last row is due, and the new chunk preempts the old one, so the arm
never idles while the stack thinks; without it, it waits for each execution result. It repeats
while enabled (``frs/proposer/enable``) and while the episode (``frs/episode_status``) is not
done.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import rclpy
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange
from rclpy.action import ActionClient
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool

from frs_control.messages import stamp_to_ns
from frs_control.ros_params import declare_described
from frs_msgs.action import ExecuteChunk, SteerChunk
from frs_msgs.msg import CoarseReference, EpisodeStatus, ObjectStates
from frs_steering.reasoning import (
    BASE_FRAME,
    CoarseProposal,
    NoReasoner,
    Observation,
    Reasoner,
)
from frs_steering.ros_messages import proposal_to_msg
from frs_vlm_bridge.images import ros_image_to_rgb
from frs_vlm_bridge.transforms import StaticTransform

BACKENDS = ("scripted", "human", "vlm", "none")
LATCHED_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
RELIABLE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10
)


def image_to_rgb(msg: Image) -> np.ndarray:
    """HxWx3 uint8 RGB of a sensor_msgs/Image: cv_bridge where installed, else numpy."""
    try:
        from cv_bridge import CvBridge
    except ImportError:
        return ros_image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, bytes(msg.data))
    return np.ascontiguousarray(CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8"))


class ChunkLatency:
    """Running estimate of observation stamp -> chunk accepted by the controller (s).

    Used by the proposing loop's thread only.
    """

    def __init__(self, initial: float = 0.1, window: int = 20) -> None:
        self._samples: deque[float] = deque([initial], maxlen=window)

    def add(self, seconds: float) -> None:
        if math.isfinite(seconds) and seconds >= 0.0:
            self._samples.append(seconds)

    def estimate(self) -> float:
        """A high quantile, so a chunk rarely arrives after its predecessor ended."""
        return float(np.quantile(self._samples, 0.9))


@dataclass(frozen=True)
class ProposerObservation:
    """The observation one chunk is proposed, steered and executed from."""

    stamp: object  # builtin_interfaces/Time of the joint_states it came from
    reasoning: Observation


class ProposerNode(Node):
    """Reasoner -> steering -> arm controller loop (see the module docstring)."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003 - rclpy Node keyword arguments
        super().__init__("proposer", **kwargs)
        self._declare_parameters()
        backend = str(self._param("reasoner"))
        if backend not in BACKENDS:
            raise ValueError(f"parameter reasoner must be one of {BACKENDS}, got {backend!r}")
        self._backend = backend
        self._frame = str(self._param("frame_id"))
        self._lock = threading.Lock()
        self._joints: JointState | None = None
        self._objects: ObjectStates | None = None
        self._image: Image | None = None
        self._instruction = ""
        self._status: EpisodeStatus | None = None
        self._enabled = bool(self._param("start_enabled"))
        self._stop = threading.Event()
        self._latency = ChunkLatency()

        from frs_control.kinematics import ArmKinematics  # compiles the MuJoCo Panda

        self._kinematics = ArmKinematics()
        self._reasoner: Reasoner = self._make_reasoner(backend)

        group = ReentrantCallbackGroup()
        self._group = group
        self.create_subscription(
            JointState,
            "joint_states",
            self._keep("_joints"),
            qos_profile_sensor_data,
            callback_group=group,
        )
        self.create_subscription(
            ObjectStates,
            "frs/object_states",
            self._keep("_objects"),
            qos_profile_sensor_data,
            callback_group=group,
        )
        self.create_subscription(
            String, "frs/instruction", self._on_instruction, LATCHED_QOS, callback_group=group
        )
        self.create_subscription(
            EpisodeStatus,
            "frs/episode_status",
            self._keep("_status"),
            RELIABLE_QOS,
            callback_group=group,
        )
        if self._param("use_camera"):
            self.create_subscription(
                Image,
                "camera/image_raw",
                self._keep("_image"),
                qos_profile_sensor_data,
                callback_group=group,
            )
        self._reference_pub = self.create_publisher(CoarseReference, "frs/reference", RELIABLE_QOS)
        self.create_service(SetBool, "frs/proposer/enable", self._on_enable, callback_group=group)
        self._steer = ActionClient(self, SteerChunk, "frs/steer_chunk", callback_group=group)
        self._execute = ActionClient(self, ExecuteChunk, "frs/execute_chunk", callback_group=group)
        self._thread = threading.Thread(target=self._loop, name="proposer_loop", daemon=True)
        self.get_logger().info(f"proposer up: reasoner {backend} ({self._reasoner!r})")

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        def floats(lo: float, hi: float) -> dict:
            return {"floating_point_range": [FloatingPointRange(from_value=lo, to_value=hi)]}

        def ints(lo: int, hi: int) -> dict:
            return {"integer_range": [IntegerRange(from_value=lo, to_value=hi, step=1)]}

        specs: list[tuple[str, object, str, bool, dict]] = [
            ("reasoner", "scripted", f"reasoner backend, one of {list(BACKENDS)}", True, {}),
            ("start_enabled", True, "propose from start-up (else wait for enable)", True, {}),
            ("frame_id", BASE_FRAME, "robot base frame of directions", True, {}),
            ("arm_joints", [f"fr3_joint{i}" for i in range(1, 8)], "arm joint names", True, {}),
            ("use_camera", False, "subscribe to camera/image_raw for the reasoner", True, {}),
            (
                "max_state_age",
                0.5,
                "s; wait for joint_states newer than this",
                False,
                floats(0.0, 60.0),
            ),
            ("max_image_age", 1.0, "s; older images are not sent", False, floats(0.0, 60.0)),
            ("method", "frs", "SteerChunk method", False, {}),
            ("num_steps", 0, "integration steps; 0 = policy default", False, ints(0, 100000)),
            ("solver", "", "ODE solver; empty = euler", False, {}),
            (
                "noise_scale",
                0.0,
                "frs: extra noise on the reversed noise",
                False,
                floats(0.0, 10.0),
            ),
            ("partial_time", 0.0, "partial_noising time; 0 = default", False, floats(0.0, 1.0)),
            ("num_samples", 0, "sample_rank samples; 0 = default", False, ints(0, 4096)),
            ("seed", -1, "steering seed; negative = nondeterministic", False, {}),
            (
                "execute_rows",
                5,
                "rows of each refined chunk to execute; 0 = all",
                False,
                ints(0, 1000),
            ),
            (
                "plan_ahead",
                True,
                "plan the next chunk while this one executes, timed to arrive as it ends",
                False,
                {},
            ),
            (
                "plan_margin",
                0.02,
                "s; plan_ahead sends the next chunk this much before the current one ends",
                False,
                floats(0.0, 1.0),
            ),
            ("steer_timeout", 5.0, "s to wait for a refined chunk", False, floats(0.01, 600.0)),
            ("execute_timeout", 10.0, "s to wait for execution", False, floats(0.01, 600.0)),
            ("retry_delay", 0.1, "s to wait after a failed chunk", False, floats(0.0, 10.0)),
            # scripted
            ("scripted_seed", 0, "scripted reasoner noise seed (+ episode number)", False, {}),
            (
                "scripted_angular_noise_deg",
                0.0,
                "scripted: direction noise",
                True,
                floats(0.0, 180.0),
            ),
            (
                "scripted_wrong_direction_rate",
                0.0,
                "scripted: reversed directions",
                True,
                floats(0.0, 1.0),
            ),
            # human
            (
                "human_max_age",
                2.0,
                "s a human command or click stays valid",
                True,
                floats(0.01, 1e6),
            ),
            (
                "camera_frame_id",
                "",
                "frame of clicked points needing the static transform",
                True,
                {},
            ),
            (
                "camera_translation",
                [0.0, 0.0, 0.0],
                "camera origin in frame_id (m), no tf2",
                True,
                {},
            ),
            (
                "camera_quaternion",
                [0.0, 0.0, 0.0, 1.0],
                "camera orientation (x y z w), no tf2",
                True,
                {},
            ),
            # vlm
            ("vlm_base_url", "http://127.0.0.1:8000/v1", "OpenAI-compatible API root", True, {}),
            ("vlm_model", "", "served model name", True, {}),
            ("vlm_api_key_env", "", "environment variable holding the API key", True, {}),
            ("vlm_api_key_file", "", "file holding the API key", True, {}),
            ("vlm_timeout_s", 10.0, "s per response wait", True, floats(0.001, 600.0)),
            ("vlm_connect_timeout_s", 2.0, "s per TCP connect", True, floats(0.001, 600.0)),
            (
                "vlm_deadline_s",
                0.0,
                "s per proposal incl. retries; 0 = none",
                True,
                floats(0.0, 600.0),
            ),
            ("vlm_max_retries", 2, "retries of transient failures", True, ints(0, 100)),
            ("vlm_retry_backoff_s", 0.5, "s first retry backoff", True, floats(0.0, 60.0)),
            ("vlm_temperature", 0.0, "sampling temperature", True, floats(0.0, 2.0)),
            ("vlm_max_tokens", 256, "answer token limit", True, ints(1, 100000)),
            ("vlm_json_mode", "object", "off | object | schema", True, {}),
            ("vlm_scene_note", "", "rig-specific prompt text", True, {}),
            (
                "vlm_max_image_side",
                0,
                "downscale images to this side; 0 = no",
                True,
                ints(0, 10000),
            ),
        ]
        declare_described(
            self, ((n, d, text, {**extra, "read_only": ro}) for n, d, text, ro, extra in specs)
        )

    def _param(self, name: str):  # noqa: ANN202
        return self.get_parameter(name).value

    def _make_reasoner(self, backend: str) -> Reasoner:
        if backend == "none":  # e.g. method noise_policy: a trained noise policy drives
            return NoReasoner()
        if backend == "scripted":
            from frs_sim.reasoner import ReasonerConfig, ScriptedReasoner

            config = ReasonerConfig(
                angular_noise_deg=float(self._param("scripted_angular_noise_deg")),
                wrong_direction_rate=float(self._param("scripted_wrong_direction_rate")),
            )
            return ScriptedReasoner(config, seed=int(self._param("scripted_seed")))
        if backend == "human":
            from frs_vlm_bridge.human import HumanConfig, HumanReasoner

            reasoner = HumanReasoner(
                HumanConfig(max_age_s=float(self._param("human_max_age"))),
                clock=lambda: self.get_clock().now().nanoseconds * 1e-9,
            )
            self._setup_human_inputs(reasoner)
            return reasoner
        from frs_vlm_bridge.vlm import VlmConfig, VlmReasoner

        def optional(name: str) -> str | None:
            return str(self._param(name)) or None

        config = VlmConfig(
            model=str(self._param("vlm_model")),
            base_url=str(self._param("vlm_base_url")),
            timeout_s=float(self._param("vlm_timeout_s")),
            connect_timeout_s=float(self._param("vlm_connect_timeout_s")),
            deadline_s=float(self._param("vlm_deadline_s")) or None,
            max_retries=int(self._param("vlm_max_retries")),
            retry_backoff_s=float(self._param("vlm_retry_backoff_s")),
            api_key_env=optional("vlm_api_key_env"),
            api_key_file=optional("vlm_api_key_file"),
            temperature=float(self._param("vlm_temperature")),
            max_tokens=int(self._param("vlm_max_tokens")),
            json_mode=str(self._param("vlm_json_mode")),
            scene_note=str(self._param("vlm_scene_note")),
            max_image_side=int(self._param("vlm_max_image_side")) or None,
        )
        return VlmReasoner(config)

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
    def _keep(self, attribute: str):  # noqa: ANN202
        def store(msg) -> None:  # noqa: ANN001
            with self._lock:
                setattr(self, attribute, msg)

        return store

    def _on_instruction(self, msg: String) -> None:
        with self._lock:
            self._instruction = msg.data.strip()

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response):  # noqa: ANN201
        self._enabled = bool(request.data)
        response.success = True
        response.message = "proposer enabled" if self._enabled else "proposer disabled"
        self.get_logger().info(response.message)
        return response

    def _episode_active(self) -> bool:
        with self._lock:
            status = self._status
        return status is None or not status.done

    # ------------------------------------------------------------------ the loop
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def _observation(self) -> ProposerObservation | None:
        """The latest observation, or None while joint_states are missing or stale."""
        with self._lock:
            joints, objects, image, instruction = (
                self._joints,
                self._objects,
                self._image,
                self._instruction,
            )
            status = self._status
        if joints is None:
            return None
        if self._age(joints.header.stamp) > float(self._param("max_state_age")):
            return None
        index = {name: i for i, name in enumerate(joints.name)}
        try:
            q = np.array([joints.position[index[n]] for n in self._param("arm_joints")])
        except (KeyError, IndexError):
            self.get_logger().warning(
                "joint_states lacks the arm joints", throttle_duration_sec=5.0
            )
            return None
        ee_position, _ = self._kinematics.forward(q)
        named = {}
        if objects is not None:
            named = {
                name: (p.position.x, p.position.y, p.position.z)
                for name, p in zip(objects.names, objects.poses, strict=False)
            }
        rgb = None
        if image is not None:
            if self._age(image.header.stamp) <= float(self._param("max_image_age")):
                try:
                    rgb = image_to_rgb(image)
                except ValueError as error:
                    self.get_logger().warning(f"image dropped: {error}", throttle_duration_sec=5.0)
        if not instruction and status is not None:
            instruction = status.instruction
        if not instruction and self._backend != "human":
            self.get_logger().info(
                "waiting for an instruction on frs/instruction", throttle_duration_sec=5.0
            )
            return None
        return ProposerObservation(
            stamp=joints.header.stamp,
            reasoning=Observation(
                instruction=instruction, ee_position=ee_position, image=rgb, objects=named
            ),
        )

    def _wait(self, future, timeout: float):  # noqa: ANN001, ANN202
        """Block this (non-executor) thread until ``future`` is done; None on timeout."""
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        deadline = time.monotonic() + timeout
        while not done.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            if self._stop.is_set() or time.monotonic() >= deadline:
                return None
        return future.result()

    def _loop(self) -> None:
        episode = None
        while not self._stop.is_set() and rclpy.ok(context=self.context):
            if not self._enabled or not self._episode_active():
                time.sleep(0.02)
                continue
            with self._lock:
                status = self._status
            if status is not None and status.episode != episode:
                episode = status.episode
                if hasattr(self._reasoner, "reset"):
                    self._reasoner.reset(int(self._param("scripted_seed")) + int(episode))
            observation = self._observation()
            if observation is None:
                time.sleep(0.01)
                continue
            try:
                self._one_chunk(observation)
            except Exception as error:  # keep proposing; the error is named in the log
                self.get_logger().error(f"chunk failed: {type(error).__name__}: {error}")
                time.sleep(float(self._param("retry_delay")))

    def _propose(self, observation: ProposerObservation) -> CoarseReference:
        proposal: CoarseProposal = self._reasoner.propose(observation.reasoning)
        msg = proposal_to_msg(
            proposal,
            stamp=observation.stamp,
            frame_id=self._frame,
            instruction=observation.reasoning.instruction,
        )
        self._reference_pub.publish(msg)
        what = "defer" if proposal.defer else np.round(proposal.direction, 2).tolist()
        self.get_logger().debug(f"proposal {what} ({proposal.reason})")
        return msg

    def _one_chunk(self, observation: ProposerObservation) -> None:
        retry = float(self._param("retry_delay"))
        reference = self._propose(observation)
        goal = SteerChunk.Goal(
            observation_stamp=observation.stamp,
            reference=reference,
            method=str(self._param("method")),
            num_steps=int(self._param("num_steps")),
            solver=str(self._param("solver")),
            noise_scale=float(self._param("noise_scale")),
            partial_time=float(self._param("partial_time")),
            num_samples=int(self._param("num_samples")),
            seed=int(self._param("seed")),
        )
        steered = self._send(self._steer, goal, float(self._param("steer_timeout")), "steering")
        if steered is None:
            time.sleep(retry)
            return
        if steered.outcome != SteerChunk.Result.OUTCOME_SUCCEEDED:
            self.get_logger().warning(
                f"steering outcome {steered.outcome}: {steered.reason}", throttle_duration_sec=2.0
            )
            time.sleep(retry)
            return
        rows = int(self._param("execute_rows")) or int(steered.refined.horizon)
        execute = ExecuteChunk.Goal(chunk=steered.refined, max_points=rows)
        plan_until = None
        if self._param("plan_ahead"):
            # The next chunk is planned while this one runs and preempts it on arrival: start
            # planning one measured pipeline latency (stamp -> chunk accepted) before this
            # chunk's last row is due, so the arm never stands still between chunks.
            end_ns = stamp_to_ns(observation.stamp) + int(rows * steered.refined.dt * 1e9)
            lead = self._latency.estimate() + float(self._param("plan_margin"))
            plan_until = end_ns - int(lead * 1e9)
        executed = self._send(
            self._execute,
            execute,
            float(self._param("execute_timeout")),
            "execution",
            accepted=lambda: self._latency.add(self._age(observation.stamp)),
            until_ns=plan_until,
        )
        if executed is not None and executed.outcome != ExecuteChunk.Result.OUTCOME_SUCCEEDED:
            self.get_logger().warning(
                f"execution outcome {executed.outcome}: {executed.reason}",
                throttle_duration_sec=2.0,
            )
            time.sleep(retry)

    def _age(self, stamp) -> float:  # noqa: ANN001 - builtin_interfaces/Time
        """Seconds from ``stamp`` to now on this node's clock."""
        return (self.get_clock().now().nanoseconds - stamp_to_ns(stamp)) * 1e-9

    def _send(  # noqa: ANN201
        self,
        client: ActionClient,
        goal,  # noqa: ANN001
        timeout: float,
        what: str,
        accepted: Callable[[], None] | None = None,
        until_ns: int | None = None,
    ):
        """Send ``goal`` and wait for its result (None, logged, when it does not come).

        With ``until_ns`` (node clock) the wait ends then, the goal left running: None.
        """
        if not client.server_is_ready():
            self.get_logger().warning(f"{what} server not available", throttle_duration_sec=5.0)
            return None
        deadline = time.monotonic() + timeout
        handle = self._wait(client.send_goal_async(goal), timeout)
        if handle is None or not handle.accepted:
            self.get_logger().warning(f"{what} goal not accepted", throttle_duration_sec=2.0)
            return None
        if accepted is not None:
            accepted()
        result_future = handle.get_result_async()
        if until_ns is not None:
            remaining = (until_ns - self.get_clock().now().nanoseconds) * 1e-9
            if remaining < deadline - time.monotonic():
                response = self._wait(result_future, max(0.0, remaining))
                return None if response is None else response.result
        response = self._wait(result_future, max(0.0, deadline - time.monotonic()))
        if response is None and not self._stop.is_set():
            self.get_logger().warning(f"{what} timed out after {timeout:g} s; canceling")
            handle.cancel_goal_async()
        return None if response is None else response.result


def main(args: list[str] | None = None) -> None:
    """Run the proposer node until interrupted."""
    rclpy.init(args=args)
    try:
        node = ProposerNode()
    except ValueError as error:  # bad parameters: say which, exit non-zero
        print(f"[proposer] {error}", file=sys.stderr)
        rclpy.try_shutdown()
        sys.exit(1)
    executor = SingleThreadedExecutor()  # the proposing loop has its own thread
    executor.add_node(node)
    node.start()
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
