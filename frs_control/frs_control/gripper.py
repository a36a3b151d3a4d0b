"""Gripper outputs of the arm controller: a command topic, or the Franka Hand's actions.

Chunks carry a continuous gripper value per row (0 = open .. 1 = closed). A ros2_control
forward controller (and the simulated robot) takes it as a stream on a topic. The Franka Hand
under franka_ros2 instead takes discrete goals from its ``franka_gripper`` node: ``move`` (go to
a width: open) and ``grasp`` (close with a force until the fingers stop within a tolerance), so
the stream is latched into open/close events with hysteresis and each event sends one goal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from std_msgs.msg import Float64MultiArray

from frs_control.ros_executor import NO_PUBLISHER_EVENTS

GRIPPER_OUTPUTS = ("topic", "franka", "none")

Event = Literal["open", "close"]


class GripperUnavailable(RuntimeError):
    """The configured gripper output cannot run here (its interface package is missing)."""


class GripperLatch:
    """Open/close events from a continuous command, with hysteresis so noise does not chatter."""

    def __init__(self, close_above: float = 0.6, open_below: float = 0.4) -> None:
        if not 0.0 <= open_below < close_above <= 1.0:
            raise ValueError(
                f"need 0 <= open_below < close_above <= 1, got {open_below}, {close_above}"
            )
        self.close_above, self.open_below = close_above, open_below
        self.state: Event | None = None  # unknown until the first decisive command

    def update(self, command: float) -> Event | None:
        """The event this command triggers (None: no change)."""
        if command >= self.close_above and self.state != "close":
            self.state = "close"
            return "close"
        if command <= self.open_below and self.state != "open":
            self.state = "open"
            return "open"
        return None


@dataclass(frozen=True)
class FrankaGripperSettings:
    """Goal fields of franka_gripper's ``move`` (open) and ``grasp`` (close) actions."""

    namespace: str = "franka_gripper"
    open_width: float = 0.08  # m between the fingers when open
    speed: float = 0.1  # m/s
    force: float = 20.0  # N while grasping
    epsilon: float = 0.08  # m; inner and outer tolerance: any object width counts as grasped


class GripperOutput(Protocol):
    def command(self, value: float) -> None: ...

    def destroy(self) -> None: ...


class TopicGripper:
    """Publishes each new command value (``std_msgs/Float64MultiArray``, one element)."""

    TOPIC = "gripper_controller/commands"

    def __init__(self, node: Any, qos: Any) -> None:
        self._node, self._message_type = node, Float64MultiArray
        self._publisher = node.create_publisher(
            Float64MultiArray, self.TOPIC, qos, event_callbacks=NO_PUBLISHER_EVENTS
        )
        self._last: float | None = None

    def command(self, value: float) -> None:
        if value != self._last:
            self._last = value
            self._publisher.publish(self._message_type(data=[value]))

    def destroy(self) -> None:
        self._node.destroy_publisher(self._publisher)


class FrankaGripper:
    """franka_gripper ``move`` / ``grasp`` goals on open / close events (needs franka_msgs)."""

    def __init__(
        self, node: Any, settings: FrankaGripperSettings, latch: GripperLatch | None = None
    ) -> None:
        try:
            from franka_msgs.action import Grasp, Move
        except ImportError:
            raise GripperUnavailable(
                "gripper_output 'franka' needs franka_msgs (franka_ros2), which is not installed "
                "here; use gripper_output:=topic (or none)"
            ) from None
        from rclpy.action import ActionClient

        self._grasp_type, self._move_type = Grasp, Move
        self._settings = settings
        self._latch = latch or GripperLatch()
        self._move = ActionClient(node, Move, f"{settings.namespace}/move")
        self._grasp = ActionClient(node, Grasp, f"{settings.namespace}/grasp")
        self._logger = node.get_logger()

    def command(self, value: float) -> None:
        event = self._latch.update(value)
        if event is not None:
            self.send(event)

    def send(self, event: Event) -> None:
        """One goal for ``event``; a missing server is logged, the arm keeps its own safety."""
        settings = self._settings
        if event == "open":
            client = self._move
            goal = self._move_type.Goal(width=settings.open_width, speed=settings.speed)
        else:
            client = self._grasp
            goal = self._grasp_type.Goal(width=0.0, speed=settings.speed, force=settings.force)
            goal.epsilon.inner = goal.epsilon.outer = settings.epsilon
        if not client.server_is_ready():
            self._logger.error(f"franka_gripper {event} server not available; gripper unchanged")
            return
        client.send_goal_async(goal)

    def destroy(self) -> None:
        self._move.destroy()
        self._grasp.destroy()


def make_gripper_output(
    node: Any,
    kind: str,
    qos: Any,
    franka: tuple[FrankaGripperSettings, GripperLatch] | None = None,
) -> GripperOutput | None:
    """The gripper output ``kind`` on ``node`` (None for "none").

    Raises ValueError for an unknown kind, GripperUnavailable where its interfaces are missing.
    """
    if kind not in GRIPPER_OUTPUTS:
        raise ValueError(f"gripper_output must be one of {GRIPPER_OUTPUTS}, got {kind!r}")
    if kind == "none":
        return None
    if kind == "topic":
        return TopicGripper(node, qos)
    settings, latch = franka or (FrankaGripperSettings(), GripperLatch())
    return FrankaGripper(node, settings, latch)
