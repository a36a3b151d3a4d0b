"""Simulated robot: the MuJoCo Panda tabletop behind the topics a real franka_ros2 rig has.

Physics runs in real time (ROS clock = wall clock) from a timer. The arm takes ros2_control-style
joint commands (forward velocity commands integrated into position targets, or a JointTrajectory
interpolated over time) and a gripper command; the node publishes joint states, ground-truth
object poses, the task instruction and episode status, and optionally camera images.

Topics, services and parameters: see ``SimRobotNode`` and the README table.
"""

from __future__ import annotations

import math

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose
from rcl_interfaces.msg import FloatingPointRange, IntegerRange
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray, Header, String
from trajectory_msgs.msg import JointTrajectory

from frs_control.execution import JointPath
from frs_control.messages import stamp_to_seconds
from frs_control.ros_params import declare_described
from frs_msgs.msg import EpisodeStatus, ObjectStates
from frs_msgs.srv import ResetEpisode
from frs_sim import scene as sc
from frs_sim.env import EnvConfig, FrankaTabletopEnv
from frs_sim.tasks import SPLITS, get_split
from frs_steering.instructions import EMBEDDING_DIM

COMMAND_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10
)
LATCHED_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
_MAX_TICK_GAP = 0.1  # s; a stalled process catches up at most this much physics per tick


def _no_embedding(_text: str) -> np.ndarray:
    """Instruction embeddings are the proposer's business; skip MiniLM here."""
    return np.zeros(EMBEDDING_DIM, dtype=np.float32)


class SimRobotNode(Node):
    """MuJoCo tabletop exposed as a franka_ros2-like robot plus episode ground truth."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("sim_robot", **kwargs)
        self._declare_parameters()
        p = self._param
        self._joint_names = [f"{p('joint_prefix')}joint{i}" for i in range(1, 8)]
        self._finger_names = [f"{p('joint_prefix')}finger_joint{i}" for i in (1, 2)]
        self._base_frame = str(p("base_frame_id"))
        self._camera_frame = str(p("camera_frame_id"))
        self._tasks = get_split(str(p("split")))
        config = EnvConfig(
            camera=str(p("camera")),
            image_width=int(p("image_width")),
            image_height=int(p("image_height")),
        )
        self.env = FrankaTabletopEnv(tasks=self._tasks, config=config, embed_fn=_no_embedding)

        # Command state: the latest command kind wins ("velocity" or "trajectory").
        self._mode = "hold"
        self._velocity = np.zeros(7)
        self._velocity_time = -math.inf
        self._trajectory: JointPath | None = None
        self._gripper = 0.0

        # Episode state.
        self._episode = 0
        self._next_seed = int(p("seed"))
        self._task_cursor = 0
        self._episode_start = 0.0
        self._done_reason = ""
        self._success = False

        self._joint_pub = self.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self._objects_pub = self.create_publisher(
            ObjectStates, "frs/object_states", qos_profile_sensor_data
        )
        self._instruction_pub = self.create_publisher(String, "frs/instruction", LATCHED_QOS)
        self._status_pub = self.create_publisher(EpisodeStatus, "frs/episode_status", 10)
        self._image_pub = self._info_pub = None
        if float(p("camera_rate")) > 0.0:
            self._image_pub = self.create_publisher(
                Image, "camera/image_raw", qos_profile_sensor_data
            )
            self._info_pub = self.create_publisher(
                CameraInfo, "camera/camera_info", qos_profile_sensor_data
            )
        self.create_subscription(
            Float64MultiArray,
            "forward_velocity_controller/commands",
            self._on_velocity_command,
            COMMAND_QOS,
        )
        self.create_subscription(
            JointTrajectory,
            "joint_trajectory_controller/joint_trajectory",
            self._on_trajectory,
            COMMAND_QOS,
        )
        self.create_subscription(
            Float64MultiArray, "gripper_controller/commands", self._on_gripper_command, COMMAND_QOS
        )
        self.create_service(ResetEpisode, "frs/reset_episode", self._on_reset)

        now = self._now()
        self._last_tick = now
        self._physics_debt = 0.0
        self._next_state = self._next_status = self._next_image = now
        self._reset_episode(task="", seed=-1, template_id=-1)
        self.create_timer(1.0 / float(p("physics_rate")), self._tick)
        self.get_logger().info(
            f"simulated robot up: split {p('split')!r}, {len(self._tasks)} tasks, "
            f"state {p('state_rate')} Hz, camera {p('camera_rate')} Hz"
        )

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        def rate(lo: float, hi: float) -> list[FloatingPointRange]:
            return [FloatingPointRange(from_value=lo, to_value=hi)]

        specs: list[tuple[str, object, str, dict[str, object]]] = [
            ("split", "novel", f"task split to draw episodes from: {sorted(SPLITS)}", {}),
            ("seed", 0, "seed of the first episode; later episodes count up", {}),
            (
                "physics_rate",
                100.0,
                "Hz of the real-time physics timer (commands are applied per tick)",
                {"floating_point_range": rate(10.0, 1000.0)},
            ),
            (
                "state_rate",
                50.0,
                "Hz of joint_states and frs/object_states (same stamp per tick)",
                {"floating_point_range": rate(1.0, 1000.0)},
            ),
            (
                "status_rate",
                10.0,
                "Hz of frs/episode_status",
                {"floating_point_range": rate(0.5, 100.0)},
            ),
            (
                "camera_rate",
                0.0,
                "Hz of camera/image_raw + camera/camera_info (EGL rendering); 0 = off",
                {"floating_point_range": rate(0.0, 60.0)},
            ),
            ("camera", "front", f"simulated camera, one of {list(sc.CAMERA_NAMES)}", {}),
            (
                "image_width",
                128,
                "camera image width, pixels",
                {"integer_range": [IntegerRange(from_value=16, to_value=1920)]},
            ),
            (
                "image_height",
                128,
                "camera image height, pixels",
                {"integer_range": [IntegerRange(from_value=16, to_value=1080)]},
            ),
            (
                "max_episode_time",
                30.0,
                "seconds before an episode is done with reason 'timeout'",
                {"floating_point_range": rate(0.1, 3600.0), "read_only": False},
            ),
            (
                "command_timeout",
                0.1,
                "s; velocity commands older than this count as zero (the arm holds)",
                {"floating_point_range": rate(0.0, 10.0), "read_only": False},
            ),
            (
                "max_target_lead",
                0.2,
                "rad; joint targets are kept this close to the measured joints (no wind-up)",
                {"floating_point_range": rate(0.01, 3.0), "read_only": False},
            ),
            ("joint_prefix", "fr3_", "joint name prefix (fr3_joint1..7, fr3_finger_joint1/2)", {}),
            ("base_frame_id", "fr3_link0", "frame of object poses (robot base)", {}),
            ("camera_frame_id", "fr3_camera_optical_frame", "frame of camera images", {}),
        ]
        declare_described(self, specs)

    def _param(self, name: str) -> object:
        return self.get_parameter(name).value

    # ------------------------------------------------------------------ commands
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_velocity_command(self, msg: Float64MultiArray) -> None:
        velocity = np.asarray(msg.data, dtype=np.float64)
        if velocity.shape != (7,) or not np.all(np.isfinite(velocity)):
            self.get_logger().warning(
                f"ignoring velocity command: need 7 finite values, got {velocity.shape}",
                throttle_duration_sec=1.0,
            )
            return
        self._mode, self._trajectory = "velocity", None
        self._velocity, self._velocity_time = velocity, self._now()

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            columns = [list(msg.joint_names).index(name) for name in self._joint_names]
        except ValueError:
            self.get_logger().warning(
                f"ignoring trajectory: joints {msg.joint_names} lack one of {self._joint_names}"
            )
            return
        now = self._now()
        start = stamp_to_seconds(msg.header.stamp) or now
        times, positions = [now], [self.env.joint_targets()[0]]
        for point in msg.points:
            t = start + point.time_from_start.sec + point.time_from_start.nanosec * 1e-9
            q = np.asarray(point.positions, dtype=np.float64)
            if len(q) != len(msg.joint_names) or not np.all(np.isfinite(q)):
                self.get_logger().warning("ignoring trajectory: a point has bad positions")
                return
            if t > times[-1]:  # points already in the past are skipped, as in JTC
                times.append(t)
                positions.append(q[columns])
        if len(times) == 1:
            self.get_logger().warning("ignoring trajectory: every point is in the past")
            return
        self._mode, self._trajectory = "trajectory", JointPath(np.array(times), np.array(positions))

    def _on_gripper_command(self, msg: Float64MultiArray) -> None:
        if len(msg.data) != 1 or not math.isfinite(msg.data[0]):
            self.get_logger().warning("ignoring gripper command: need one finite value in [0, 1]")
            return
        self._gripper = float(np.clip(msg.data[0], 0.0, 1.0))

    def _joint_targets(self, now: float, elapsed: float) -> np.ndarray:
        """Arm joint targets for this tick from the active command, leashed to the measurement."""
        target, _ = self.env.joint_targets()
        if self._mode == "velocity":
            if now - self._velocity_time <= float(self._param("command_timeout")):
                target = target + self._velocity * elapsed
        elif self._mode == "trajectory" and self._trajectory is not None:
            target, _ = self._trajectory.sample(now)
        measured, _ = self.env.arm_joint_state()
        lead = float(self._param("max_target_lead"))
        return np.clip(target, measured - lead, measured + lead)

    # ------------------------------------------------------------------ physics and output
    def _tick(self) -> None:
        now = self._now()
        elapsed = min(max(now - self._last_tick, 0.0), _MAX_TICK_GAP)
        self._last_tick = now
        self.env.set_joint_targets(self._joint_targets(now, elapsed), self._gripper)
        self._physics_debt += elapsed
        steps = self.env.advance(self._physics_debt)
        self._physics_debt = max(0.0, self._physics_debt - steps * self.env.model.opt.timestep)
        self._update_episode(now)
        stamp = self.get_clock().now().to_msg()
        if now >= self._next_state:
            self._next_state = max(self._next_state + 1.0 / float(self._param("state_rate")), now)
            self._publish_states(stamp)
        if now >= self._next_status:
            self._next_status = max(
                self._next_status + 1.0 / float(self._param("status_rate")), now
            )
            self._publish_status(stamp, now)
        camera_rate = float(self._param("camera_rate"))
        if self._image_pub is not None and now >= self._next_image:
            self._next_image = max(self._next_image + 1.0 / camera_rate, now)
            self._publish_image(stamp)

    def _publish_states(self, stamp: Time) -> None:
        header = Header(stamp=stamp, frame_id="")
        q, qd = self.env.arm_joint_state()
        fq, fqd = self.env.finger_joint_state()
        self._joint_pub.publish(
            JointState(
                header=header,
                name=self._joint_names + self._finger_names,
                position=[*q.tolist(), *fq.tolist()],
                velocity=[*qd.tolist(), *fqd.tolist()],
            )
        )
        cube_pos, cube_quat = self.env.object_poses_in_base()
        msg = ObjectStates(header=Header(stamp=stamp, frame_id=self._base_frame))
        for name, pos, quat in zip(sc.OBJECT_NAMES, cube_pos, cube_quat, strict=True):
            msg.names.append(f"{name}_cube")
            msg.kinds.append(ObjectStates.KIND_OBJECT)
            msg.poses.append(_pose(pos, quat))
        for name, pos in self.env.target_positions().items():
            msg.names.append(f"{name}_mat")
            msg.kinds.append(ObjectStates.KIND_TARGET)
            msg.poses.append(_pose(pos, np.array([1.0, 0.0, 0.0, 0.0])))
        self._objects_pub.publish(msg)

    def _update_episode(self, now: float) -> None:
        if self._done_reason:
            return
        if self.env.is_success():
            self._success, self._done_reason = True, "success"
        elif self.env.object_dropped():
            self._done_reason = "object dropped off the table"
        elif now - self._episode_start >= float(self._param("max_episode_time")):
            self._done_reason = "timeout"
        if self._done_reason:
            self.get_logger().info(f"episode {self._episode} done: {self._done_reason}")

    def _publish_status(self, stamp: Time, now: float) -> None:
        self._status_pub.publish(
            EpisodeStatus(
                header=Header(stamp=stamp, frame_id=self._base_frame),
                episode=self._episode,
                task=self.env.task.name,
                instruction=self.env.instruction,
                step=int((now - self._episode_start) / self.env.config.control_dt),
                success=self._success,
                done=bool(self._done_reason),
                reason=self._done_reason,
            )
        )

    def _publish_image(self, stamp: Time) -> None:
        rgb = self.env.render_camera()
        height, width = rgb.shape[:2]
        header = Header(stamp=stamp, frame_id=self._camera_frame)
        self._image_pub.publish(
            Image(
                header=header,
                height=height,
                width=width,
                encoding="rgb8",
                is_bigendian=0,
                step=width * 3,
                data=rgb.tobytes(),
            )
        )
        cam_id = self.env.model.camera(str(self._param("camera"))).id
        fovy = math.radians(float(self.env.model.cam_fovy[cam_id]))
        focal = 0.5 * height / math.tan(0.5 * fovy)
        cx, cy = 0.5 * width, 0.5 * height
        self._info_pub.publish(
            CameraInfo(
                header=header,
                height=height,
                width=width,
                distortion_model="plumb_bob",
                d=[0.0] * 5,
                k=[focal, 0.0, cx, 0.0, focal, cy, 0.0, 0.0, 1.0],
                r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                p=[focal, 0.0, cx, 0.0, 0.0, focal, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
            )
        )

    # ------------------------------------------------------------------ episodes
    def _reset_episode(self, task: str, seed: int, template_id: int) -> tuple[str, str]:
        """Reset the scene; returns (task name, instruction). Raises ValueError on a bad task."""
        names = [t.name for t in self._tasks]
        if task and task not in names:
            raise ValueError(f"task {task!r} is not in split {self._param('split')!r}")
        index = names.index(task) if task else self._task_cursor % len(self._tasks)
        spec = self._tasks[index]
        if template_id >= 0 and template_id not in spec.template_ids:
            raise ValueError(
                f"template {template_id} not among {spec.template_ids} for {spec.name}"
            )
        task, self._task_cursor = spec.name, index + 1
        if seed < 0:
            seed = self._next_seed
        self._next_seed = seed + 1
        options: dict[str, object] = {"task": task}
        if template_id >= 0:
            options["template_id"] = template_id
        self.env.reset(seed=seed, options=options)
        self._mode, self._trajectory, self._velocity = "hold", None, np.zeros(7)
        self._gripper = 0.0
        self._episode += 1
        self._episode_start = self._now()
        self._success, self._done_reason = False, ""
        self._instruction_pub.publish(String(data=self.env.instruction))
        self.get_logger().info(
            f"episode {self._episode}: {task} (seed {seed}): {self.env.instruction!r}"
        )
        return task, self.env.instruction

    def _on_reset(
        self, request: ResetEpisode.Request, response: ResetEpisode.Response
    ) -> ResetEpisode.Response:
        try:
            task, instruction = self._reset_episode(
                request.task, int(request.seed), int(request.template_id)
            )
        except ValueError as err:
            response.success, response.message = False, str(err)
            return response
        response.success, response.message = True, "reset"
        response.episode, response.task, response.instruction = self._episode, task, instruction
        now = self.get_clock().now()
        self._publish_states(now.to_msg())
        self._publish_status(now.to_msg(), now.nanoseconds * 1e-9)
        return response

    def destroy_node(self) -> None:
        """Release the renderer with the node."""
        self.env.close()
        super().destroy_node()


def _pose(position: np.ndarray, quat_wxyz: np.ndarray) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
    w, x, y, z = (float(v) for v in quat_wxyz)
    pose.orientation.w, pose.orientation.x = w, x
    pose.orientation.y, pose.orientation.z = y, z
    return pose


def main(args: list[str] | None = None) -> None:
    """Run the simulated robot until Ctrl-C."""
    rclpy.init(args=args)
    node = None
    try:
        node = SimRobotNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
