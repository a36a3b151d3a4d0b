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
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.utilities import remove_ros_args

from frs_bringup.bags import LATCHED_TOPICS, RECORD_TOPICS, SENSOR_TOPICS, BagError, BagWriter

#: The recorder's node name (``sim_demo`` waits for it before the first episode).
RECORDER_NODE = "frs_recorder"


def message_class(msgtype: str):  # noqa: ANN201
    """The rclpy class of ``pkg/msg/Name``."""
    package, _, name = msgtype.rpartition("/")
    return getattr(importlib.import_module(package.replace("/", ".")), name)


def topic_qos(topic: str) -> QoSProfile:
    """Best effort for sensor topics and cameras (matches any publisher), latched for the
    instruction."""
    if topic in SENSOR_TOPICS or topic.endswith("image_raw"):
        return qos_profile_sensor_data
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
    """Raw subscriptions on ``topics`` that append to ``writer``."""

    def __init__(self, writer: BagWriter, topics: dict[str, str], **kwargs) -> None:  # noqa: ANN003
        super().__init__(RECORDER_NODE, **kwargs)
        self._writer = writer
        self.received = 0
        for topic, msgtype in topics.items():
            resolved = self.resolve_topic_name(topic)  # absolute, as ros2 bag record stores
            writer.add_topic(resolved, msgtype)
            self.create_subscription(
                message_class(msgtype),
                topic,
                self._callback(resolved),
                topic_qos(topic),
                raw=True,
            )

    def _callback(self, topic: str):  # noqa: ANN202
        def record(data: bytes) -> None:
            self._writer.write_raw(topic, self.get_clock().now().nanoseconds, data)
            self.received += 1

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


def select_topics(args: argparse.Namespace) -> dict[str, str]:
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
    if args.params_file is not None:
        topics.update(observed_topics(args.params_file))
    return topics


def observed_topics(params_file: Path) -> dict[str, str]:
    """Topic -> type of what the steering node configured by ``params_file`` observes."""
    from frs_bringup.bag_replay import steering_adapter, steering_parameters

    adapter = steering_adapter(steering_parameters(params_file))
    return {spec.topic.strip("/"): spec.msg_type for spec in adapter.streams()}


def main(argv: list[str] | None = None) -> int:
    argv = remove_ros_args(sys.argv if argv is None else ["frs_record", *argv])[1:]
    args = parse_args(argv)
    topics = select_topics(args)
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
    node = Recorder(writer, topics)
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
