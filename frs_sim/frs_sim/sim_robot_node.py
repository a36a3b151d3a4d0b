"""Simulated robot: the MuJoCo Panda tabletop behind the topics a real franka_ros2 rig has.

Physics runs in real time (ROS clock = wall clock) from a timer. The arm takes ros2_control-style
joint commands (forward velocity commands integrated into position targets, or a JointTrajectory
interpolated over time) and a gripper command; the node publishes joint states, ground-truth
object poses, the task instruction and episode status, and optionally camera images (any of the
scene's cameras, each on ``<name>/image_raw`` + ``<name>/camera_info``). The decisions behind
these topics live in :mod:`frs_sim.sim_robot`; this node translates.

Topics, services and parameters: see ``SimRobotNode`` and the README table.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import (
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray, Header, String
from trajectory_msgs.msg import JointTrajectory

from frs_control.messages import stamp_to_seconds
from frs_control.ros_executor import LATCHED_QOS, RELIABLE_QOS, run_node
from frs_control.ros_params import declare_described, float_range, int_range
from frs_msgs.msg import EpisodeStatus, ObjectStates
from frs_msgs.srv import ResetEpisode
from frs_sim import scene as sc
from frs_sim.env import EnvConfig, FrankaTabletopEnv
from frs_sim.ros_messages import object_states, pinhole_camera_info, rgb_image
from frs_sim.sim_robot import (
    GENERIC_CAMERA,
    ArmCommand,
    CameraStream,
    EpisodeSchedule,
    camera_streams,
    gripper_command,
    pinhole_intrinsics,
)
from frs_sim.tasks import SPLITS, get_split
from frs_steering.instructions import EMBEDDING_DIM

SENSOR_QOS = qos_profile_sensor_data
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
        split = str(p("split"))
        self._tasks = get_split(split)
        self._schedule = EpisodeSchedule(self._tasks, split, int(p("seed")))
        streams = camera_streams(list(p("cameras")), str(p("camera")), str(p("camera_frame_id")))
        config = EnvConfig(
            camera=str(p("camera")),
            image_width=int(p("image_width")),
            image_height=int(p("image_height")),
        )
        self.env = FrankaTabletopEnv(tasks=self._tasks, config=config, embed_fn=_no_embedding)

        self._command = ArmCommand(len(self._joint_names))
        self._gripper = 0.0

        # Episode state.
        self._episode = 0
        self._episode_start = 0.0
        self._done_reason = ""
        self._success = False

        self._joint_pub = self.create_publisher(JointState, "joint_states", SENSOR_QOS)
        self._objects_pub = self.create_publisher(ObjectStates, "frs/object_states", SENSOR_QOS)
        self._instruction_pub = self.create_publisher(String, "frs/instruction", LATCHED_QOS)
        self._status_pub = self.create_publisher(EpisodeStatus, "frs/episode_status", 10)
        # (stream, image publisher, camera_info publisher) per published camera
        self._cameras: list[tuple[CameraStream, Publisher, Publisher]] = []
        if float(p("camera_rate")) > 0.0:
            self._cameras = [
                (
                    stream,
                    self.create_publisher(Image, f"{stream.topic}/image_raw", SENSOR_QOS),
                    self.create_publisher(CameraInfo, f"{stream.topic}/camera_info", SENSOR_QOS),
                )
                for stream in streams
            ]
        self.create_subscription(
            Float64MultiArray,
            "forward_velocity_controller/commands",
            self._on_velocity_command,
            RELIABLE_QOS,
        )
        self.create_subscription(
            JointTrajectory,
            "joint_trajectory_controller/joint_trajectory",
            self._on_trajectory,
            RELIABLE_QOS,
        )
        self.create_subscription(
            Float64MultiArray, "gripper_controller/commands", self._on_gripper_command, RELIABLE_QOS
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
            f"state {p('state_rate')} Hz, cameras {[s.topic for s, _, _ in self._cameras]} at "
            f"{p('camera_rate')} Hz"
        )

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        specs: list[tuple[str, object, str, dict[str, object]]] = [
            ("split", "novel", f"task split to draw episodes from: {sorted(SPLITS)}", {}),
            ("seed", 0, "seed of the first episode; later episodes count up", {}),
            (
                "physics_rate",
                100.0,
                "Hz of the real-time physics timer (commands are applied per tick)",
                float_range(10.0, 1000.0),
            ),
            (
                "state_rate",
                50.0,
                "Hz of joint_states and frs/object_states (same stamp per tick)",
                float_range(1.0, 1000.0),
            ),
            ("status_rate", 10.0, "Hz of frs/episode_status", float_range(0.5, 100.0)),
            (
                "camera_rate",
                0.0,
                "Hz of every camera's <name>/image_raw + <name>/camera_info (EGL); 0 = off",
                float_range(0.0, 60.0),
            ),
            (
                "cameras",
                [GENERIC_CAMERA],
                f"cameras to publish, each on <name>/image_raw: any of {list(sc.CAMERA_NAMES)}, "
                f"or {GENERIC_CAMERA!r} (the 'camera' parameter's scene camera)",
                {},
            ),
            (
                "camera",
                "front",
                f"scene camera on camera/image_raw, one of {list(sc.CAMERA_NAMES)}",
                {},
            ),
            ("image_width", 128, "camera image width, pixels", int_range(16, 1920)),
            ("image_height", 128, "camera image height, pixels", int_range(16, 1080)),
            (
                "max_episode_time",
                30.0,
                "seconds before an episode is done with reason 'timeout'",
                {**float_range(0.1, 3600.0), "read_only": False},
            ),
            (
                "command_timeout",
                0.1,
                "s; velocity commands older than this stop the arm where it is (driver timeout)",
                {**float_range(0.0, 10.0), "read_only": False},
            ),
            (
                "max_target_lead",
                0.2,
                "rad; joint targets are kept this close to the measured joints (no wind-up)",
                {**float_range(0.01, 3.0), "read_only": False},
            ),
            ("joint_prefix", "fr3_", "joint name prefix (fr3_joint1..7, fr3_finger_joint1/2)", {}),
            ("base_frame_id", "fr3_link0", "frame of object poses (robot base)", {}),
            (
                "camera_frame_id",
                "fr3_camera_optical_frame",
                "frame of camera/image_raw (a named camera's: <name>_camera_optical_frame)",
                {},
            ),
        ]
        declare_described(self, specs)

    def _param(self, name: str) -> object:
        return self.get_parameter(name).value

    # ------------------------------------------------------------------ commands
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_velocity_command(self, msg: Float64MultiArray) -> None:
        try:
            self._command.set_velocity(msg.data, self._now())
        except ValueError as err:
            self.get_logger().warning(str(err), throttle_duration_sec=1.0)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        now = self._now()
        points = [
            (p.time_from_start.sec + p.time_from_start.nanosec * 1e-9, p.positions)
            for p in msg.points
        ]
        start = stamp_to_seconds(msg.header.stamp) or now
        current, _ = self.env.joint_targets()
        try:
            self._command.set_trajectory(
                msg.joint_names, self._joint_names, start, points, now, current
            )
        except ValueError as err:
            self.get_logger().warning(str(err))

    def _on_gripper_command(self, msg: Float64MultiArray) -> None:
        try:
            self._gripper = gripper_command(msg.data)
        except ValueError as err:
            self.get_logger().warning(str(err))

    def _joint_targets(self, now: float, elapsed: float) -> np.ndarray:
        """Arm joint targets for this tick from the active command, leashed to the measurement."""
        return self._command.targets(
            now,
            elapsed,
            self.env.joint_targets()[0],
            self.env.arm_joint_state()[0],
            float(self._param("command_timeout")),
            float(self._param("max_target_lead")),
        )

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
        if self._cameras and now >= self._next_image:
            self._next_image = max(self._next_image + 1.0 / float(self._param("camera_rate")), now)
            self._publish_images(stamp)

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
        cubes = dict(zip(sc.OBJECT_NAMES, zip(cube_pos, cube_quat, strict=True), strict=True))
        header = Header(stamp=stamp, frame_id=self._base_frame)
        self._objects_pub.publish(object_states(header, cubes, self.env.target_positions()))

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

    def _publish_images(self, stamp: Time) -> None:
        """One frame per published camera (each scene camera rendered once), same stamp."""
        frames: dict[str, np.ndarray] = {}
        for stream, image_pub, info_pub in self._cameras:
            if stream.camera not in frames:
                frames[stream.camera] = self.env.render_camera(stream.camera)
            rgb = frames[stream.camera]
            height, width = rgb.shape[:2]
            header = Header(stamp=stamp, frame_id=stream.frame_id)
            image_pub.publish(rgb_image(rgb, header))
            intrinsics = pinhole_intrinsics(self.env.model, stream.camera, width, height)
            info_pub.publish(pinhole_camera_info(header, width, height, *intrinsics))

    # ------------------------------------------------------------------ episodes
    def _reset_episode(self, task: str, seed: int, template_id: int) -> tuple[str, str]:
        """Reset the scene; returns (task name, instruction). Raises ValueError on a bad task."""
        seed, options = self._schedule.next(task, seed, template_id)
        task = str(options["task"])
        self.env.reset(seed=seed, options=options)
        self._command.hold()
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


def main(args: list[str] | None = None) -> None:
    """Run the simulated robot until Ctrl-C / SIGTERM (a clean exit, never a traceback)."""
    run_node(SimRobotNode, args)


if __name__ == "__main__":
    main()
