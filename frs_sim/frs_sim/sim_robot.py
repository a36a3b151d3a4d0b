"""What the simulated robot node decides, without ROS: commands, episodes, cameras.

:mod:`frs_sim.sim_robot_node` only translates between topics and these pieces:

* :class:`ArmCommand`: the latest arm command (ros2_control forward velocities, or a joint
  trajectory interpolated over time) turned into joint position targets per physics tick;
* :class:`EpisodeSchedule`: which task, seed and instruction template the next episode runs;
* :func:`camera_streams` and :func:`pinhole_intrinsics`: which scene cameras go on which topics,
  and their calibration.

Bad input raises ``ValueError`` with a message for the log and changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import mujoco
import numpy as np

from frs_control.execution import JointPath
from frs_sim import scene as sc
from frs_sim.tasks import TaskSpec

#: ``cameras`` entry that publishes the ``camera`` parameter's scene camera on the rig's generic
#: ``camera/image_raw`` topic (what the proposer and the recorder read).
GENERIC_CAMERA = "camera"


class ArmCommand:
    """The latest arm command; the latest kind ("velocity" or "trajectory") wins."""

    def __init__(self, n_joints: int = 7) -> None:
        self.n_joints = n_joints
        self.hold()

    def hold(self) -> None:
        """Drop any command: the arm holds its current targets."""
        self.mode = "hold"
        self.velocity = np.zeros(self.n_joints)
        self.velocity_time = -math.inf
        self.trajectory: JointPath | None = None

    def set_velocity(self, values: Sequence[float], now: float) -> None:
        """Forward velocity command (rad/s per joint) received at ``now``."""
        velocity = np.asarray(values, dtype=np.float64)
        if velocity.shape != (self.n_joints,) or not np.all(np.isfinite(velocity)):
            raise ValueError(
                f"ignoring velocity command: need {self.n_joints} finite values, "
                f"got {velocity.shape}"
            )
        self.mode, self.trajectory = "velocity", None
        self.velocity, self.velocity_time = velocity, now

    def set_trajectory(
        self,
        names: Sequence[str],
        joint_names: Sequence[str],
        start: float,
        points: Sequence[tuple[float, Sequence[float]]],
        now: float,
        current: np.ndarray,
    ) -> None:
        """Joint trajectory: ``points`` are (seconds after ``start``, positions in ``names`` order).

        The path starts at ``current`` targets now; points already in the past are skipped, as
        in ros2_control's joint trajectory controller.
        """
        try:
            columns = [list(names).index(name) for name in joint_names]
        except ValueError:
            raise ValueError(
                f"ignoring trajectory: joints {list(names)} lack one of {list(joint_names)}"
            ) from None
        times, positions = [now], [np.asarray(current, dtype=np.float64)]
        for offset, values in points:
            t = start + offset
            q = np.asarray(values, dtype=np.float64)
            if len(q) != len(names) or not np.all(np.isfinite(q)):
                raise ValueError("ignoring trajectory: a point has bad positions")
            if t > times[-1]:
                times.append(t)
                positions.append(q[columns])
        if len(times) == 1:
            raise ValueError("ignoring trajectory: every point is in the past")
        self.mode = "trajectory"
        self.trajectory = JointPath(np.array(times), np.array(positions))

    def targets(
        self,
        now: float,
        elapsed: float,
        current: np.ndarray,
        measured: np.ndarray,
        command_timeout: float,
        max_lead: float,
    ) -> np.ndarray:
        """Joint targets for this tick, kept within ``max_lead`` of ``measured`` (no wind-up).

        A velocity command older than ``command_timeout`` stops the arm where it is, as a real
        driver's command timeout does: the targets jump to the measured joints once (the lead
        the targets had over the arm is dropped, not driven to) and then hold.
        """
        target = current
        if self.mode == "velocity":
            if now - self.velocity_time <= command_timeout:
                target = target + self.velocity * elapsed
            else:
                self.mode, target = "hold", measured
        elif self.mode == "trajectory" and self.trajectory is not None:
            target, _ = self.trajectory.sample(now)
        return np.clip(target, measured - max_lead, measured + max_lead)


def gripper_command(values: Sequence[float]) -> float:
    """Gripper command in [0, 1] (0 open, 1 closed) from a one-value message."""
    if len(values) != 1 or not math.isfinite(values[0]):
        raise ValueError("ignoring gripper command: need one finite value in [0, 1]")
    return float(np.clip(values[0], 0.0, 1.0))


class EpisodeSchedule:
    """Task and seed of each episode: a named task or the split's next one, seeds counting up."""

    def __init__(self, tasks: Sequence[TaskSpec], split: str, first_seed: int) -> None:
        if not tasks:
            raise ValueError(f"split {split!r} has no tasks")
        self.tasks, self.split = list(tasks), split
        self.next_seed, self._cursor = int(first_seed), 0

    def next(self, task: str = "", seed: int = -1, template_id: int = -1) -> tuple[int, dict]:
        """(seed, ``env.reset`` options) of the next episode; empty task / negative seed or
        template: the split's next task, the next seed, a random template.

        Raises ``ValueError`` (and changes nothing) on a task outside the split or a template the
        task does not have.
        """
        names = [t.name for t in self.tasks]
        if task and task not in names:
            raise ValueError(f"task {task!r} is not in split {self.split!r}")
        index = names.index(task) if task else self._cursor % len(self.tasks)
        spec = self.tasks[index]
        if template_id >= 0 and template_id not in spec.template_ids:
            raise ValueError(
                f"template {template_id} not among {spec.template_ids} for {spec.name}"
            )
        self._cursor = index + 1
        if seed < 0:
            seed = self.next_seed
        self.next_seed = seed + 1
        options: dict[str, object] = {"task": spec.name}
        if template_id >= 0:
            options["template_id"] = template_id
        return seed, options


@dataclass(frozen=True)
class CameraStream:
    """One published camera: ``<topic>/image_raw`` + ``<topic>/camera_info`` from a scene camera."""

    topic: str
    camera: str  # one of scene.CAMERA_NAMES
    frame_id: str


def camera_streams(
    entries: Sequence[str], generic_camera: str, generic_frame_id: str
) -> list[CameraStream]:
    """Streams for the ``cameras`` parameter: each scene camera named on its own topic, and
    :data:`GENERIC_CAMERA` for ``generic_camera`` on ``camera/*`` in ``generic_frame_id``.

    Named cameras use frame ``<name>_camera_optical_frame``.
    """
    if generic_camera not in sc.CAMERA_NAMES:
        raise ValueError(f"camera {generic_camera!r} is not one of {list(sc.CAMERA_NAMES)}")
    streams: list[CameraStream] = []
    for entry in entries:
        if entry == GENERIC_CAMERA:
            streams.append(CameraStream(GENERIC_CAMERA, generic_camera, generic_frame_id))
        elif entry in sc.CAMERA_NAMES:
            streams.append(CameraStream(entry, entry, f"{entry}_camera_optical_frame"))
        else:
            raise ValueError(
                f"unknown camera {entry!r} in cameras: use {GENERIC_CAMERA!r} or one of "
                f"{list(sc.CAMERA_NAMES)}"
            )
    topics = [s.topic for s in streams]
    if len(set(topics)) != len(topics):
        raise ValueError(f"cameras lists a camera twice: {list(entries)}")
    return streams


def pinhole_intrinsics(
    model: mujoco.MjModel, camera: str, width: int, height: int
) -> tuple[float, float, float]:
    """(focal length, cx, cy) in pixels of a scene camera rendered at ``width`` x ``height``."""
    fovy = math.radians(float(model.cam_fovy[model.camera(camera).id]))
    return 0.5 * height / math.tan(0.5 * fovy), 0.5 * width, 0.5 * height
