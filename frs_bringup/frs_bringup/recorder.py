"""Record an FRS session into a rosbag2 MCAP bag: ``frs_record --out runs/session1``.

Subscribes to the observation, instruction, reference, steering-record, diagnostics, command
and episode topics (:data:`frs_bringup.bags.RECORD_TOPICS`, or ``--topics``) with raw (CDR)
subscriptions and writes each message as it arrives, logged at its receive time as
``ros2 bag record`` does. The bag is a rosbag2 directory (``metadata.yaml`` + ``<name>.mcap``,
version 9) that embeds every message definition, ``frs_msgs`` included, so ``ros2 bag info``,
``ros2 bag play`` and ``mcap`` readers on a rig accept it without this workspace.

Memory stays bounded (each 1 MiB chunk goes to disk). SIGINT/SIGTERM (or ``--duration``) close
the bag cleanly; until then it lives in ``.<name>.partial`` next to the target, so a killed
recorder never leaves an unreadable bag under the requested name. Closing fills in the MCAP
CRCs (chunks, data section, summary) that readers verify, so a corrupted byte is an error on
replay rather than different data.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rclpy.utilities import remove_ros_args
from std_msgs.msg import String

from frs_bringup.bag_replay import RECORD_TOPIC
from frs_bringup.bags import LATCHED_TOPICS, RECORD_TOPICS, SENSOR_TOPICS, BagError, BagWriter
from frs_control.ros_executor import LATCHED_QOS, NO_SUBSCRIPTION_EVENTS

#: The recorder's node name.
RECORDER_NODE = "frs_recorder"
#: Latched ``std_msgs/String`` the recorder publishes once it records what a replay needs: a
#: sample on every topic the steering node observes, and the steering records' publisher
#: matched. ``sim_demo --record`` starts episodes only after it (before, under load, the first
#: chunks' observations were missing from the bag: the recorder's joint_states reader matched
#: the robot's publisher a second after its other readers).
READY_TOPIC = "frs/recorder/ready"


def message_class(msgtype: str):  # noqa: ANN201
    """The rclpy class of ``pkg/msg/Name``."""
    package, _, name = msgtype.rpartition("/")
    return getattr(importlib.import_module(package.replace("/", ".")), name)


#: Samples a sensor subscription holds until the recorder takes them: the sensor default (5)
#: lost joint_states samples, and with them chunks' observations, whenever a loaded machine
#: stalled the recorder for a few tens of ms.
SENSOR_BACKLOG = 1000


def is_sensor_topic(topic: str) -> bool:
    """Published best effort (joint states, object states, cameras)."""
    return topic in SENSOR_TOPICS or topic.endswith("image_raw")


def topic_qos(topic: str) -> QoSProfile:
    """Best effort for sensor topics and cameras (matches any publisher) with a deep backlog,
    latched for the instruction."""
    if is_sensor_topic(topic):
        return QoSProfile(
            reliability=ReliabilityPolicy.BEST_EFFORT,
            history=HistoryPolicy.KEEP_LAST,
            depth=SENSOR_BACKLOG,
            durability=DurabilityPolicy.VOLATILE,
        )
    durability = (
        DurabilityPolicy.TRANSIENT_LOCAL if topic in LATCHED_TOPICS else DurabilityPolicy.VOLATILE
    )
    return QoSProfile(
        reliability=ReliabilityPolicy.RELIABLE,
        history=HistoryPolicy.KEEP_LAST,
        depth=100,
        durability=durability,
    )


class Recorder(Node):
    """Raw subscriptions on ``topics`` that append to ``writer``; announces on
    :data:`READY_TOPIC` once each of ``required`` delivered a sample (and, when recorded, the
    steering records have a publisher)."""

    def __init__(
        self,
        writer: BagWriter,
        topics: dict[str, str],
        required: Sequence[str] = (),
        **kwargs,  # noqa: ANN003
    ) -> None:
        super().__init__(RECORDER_NODE, **kwargs)
        self._writer = writer
        self.received = 0
        self._waiting_for = {self.resolve_topic_name(topic) for topic in required}
        self._records = self.resolve_topic_name(RECORD_TOPIC) if RECORD_TOPIC in topics else None
        for topic, msgtype in topics.items():
            resolved = self.resolve_topic_name(topic)  # absolute, as ros2 bag record stores
            writer.add_topic(resolved, msgtype)
            # A best-effort, volatile reader matches any publisher: no QoS event handler
            # (polled on every executor pass) for those.
            events = NO_SUBSCRIPTION_EVENTS if is_sensor_topic(topic) else None
            self.create_subscription(
                message_class(msgtype),
                topic,
                self._callback(resolved),
                topic_qos(topic),
                raw=True,
                event_callbacks=events,
            )
        self._ready = self.create_publisher(String, READY_TOPIC, LATCHED_QOS)
        self._ready_check = self.create_timer(0.1, self._announce_when_ready)

    def _announce_when_ready(self) -> None:
        if self._waiting_for or (self._records and not self.count_publishers(self._records)):
            return
        self._ready.publish(String(data=f"recording {len(self._writer.counts)} topics"))
        self.destroy_timer(self._ready_check)

    def _callback(self, topic: str):  # noqa: ANN202
        def record(data: bytes) -> None:
            self._writer.write_raw(topic, self.get_clock().now().nanoseconds, data)
            self.received += 1
            self._waiting_for.discard(topic)

        return record


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="bag directory to create")
    parser.add_argument(
        "--topics",
        nargs="+",
        default=None,
        help="topics as name or name:=pkg/msg/Type (default: the FRS session topics)",
    )
    parser.add_argument("--camera", action="store_true", help="also record camera/image_raw")
    parser.add_argument(
        "--params-file",
        type=Path,
        default=None,
        help="the stack's parameter YAML: also record the topics its steering node observes "
        "(the observation adapter's, e.g. camera images)",
    )
    parser.add_argument("--duration", type=float, default=0.0, help="stop after s (0 = SIGINT)")
    return parser.parse_args(argv)


def required_topics(topics: dict[str, str], observed: dict[str, str]) -> list[str]:
    """The recorded topics a replay needs a sample of from the start: joint_states and what the
    steering node observes (``observed``)."""
    return [topic for topic in topics if topic == "joint_states" or topic in observed]


def select_topics(args: argparse.Namespace, observed: dict[str, str]) -> dict[str, str]:
    """Topic -> type to record: the FRS session topics (or ``--topics``), the camera with
    ``--camera``, and ``observed`` (what the steering node observes)."""
    topics = dict(RECORD_TOPICS)
    if args.topics:
        topics = {}
        for item in args.topics:
            name, _, msgtype = item.partition(":=")
            name = name.strip("/")
            msgtype = msgtype or RECORD_TOPICS.get(name, "")
            if not msgtype:
                raise SystemExit(f"frs_record: give the type of {name!r} as {name}:=pkg/msg/Type")
            topics[name] = msgtype
    if args.camera:
        topics["camera/image_raw"] = "sensor_msgs/msg/Image"
    topics.update(observed)
    return topics


def observed_topics(params_file: Path) -> dict[str, str]:
    """Topic -> type of what the steering node configured by ``params_file`` observes."""
    from frs_bringup.bag_replay import observed_topic_types, steering_adapter, steering_parameters

    return observed_topic_types(steering_adapter(steering_parameters(params_file)))


def main(argv: list[str] | None = None) -> int:
    argv = remove_ros_args(sys.argv if argv is None else ["frs_record", *argv])[1:]
    args = parse_args(argv)
    observed = observed_topics(args.params_file) if args.params_file is not None else {}
    topics = select_topics(args, observed)
    try:
        writer = BagWriter(args.out)
    except BagError as error:
        print(f"frs_record: error: {error}", file=sys.stderr)
        return 2
    rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    stop = {"now": False}

    def on_signal(_signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    node = Recorder(writer, topics, required_topics(topics, observed))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    print(f"frs_record: recording {len(topics)} topics to {args.out}", flush=True)
    deadline = time.monotonic() + args.duration if args.duration > 0 else float("inf")
    code = 0
    try:
        while not stop["now"] and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as error:  # noqa: BLE001 - close the bag whatever went wrong
        print(f"frs_record: error: {type(error).__name__}: {error}", file=sys.stderr)
        code = 1
    finally:
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown()
        path = writer.close()
    counts = ", ".join(f"{t} {n}" for t, n in writer.counts.items() if n)
    print(f"frs_record: wrote {sum(writer.counts.values())} messages to {path} ({counts})")
    return code


if __name__ == "__main__":
    sys.exit(main())
