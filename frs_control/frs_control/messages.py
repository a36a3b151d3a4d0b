"""Wire format shared by every node: stamps, ``ActionChunk`` <-> arrays, joints, camera images.

No rclpy node, no torch, no cv_bridge: the arm controller, the steering node, the proposer and
the bag tools all read and write chunks, stamps, joint states and images through these functions
(messages are read by attribute, so rosbags' deserialized messages work too). Every
``*_from_msg`` check raises :class:`MessageError` naming the first bad field, so a node can pass
the text straight back to its client.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration, Time
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from frs_control.execution import ChunkRejected, ChunkRequest
from frs_msgs.msg import ActionChunk


class MessageError(ValueError):
    """A message field is malformed; ``str(err)`` names the field and the problem."""


def check_time(stamp: Time, field: str) -> None:
    """MessageError unless ``stamp`` is a valid ``builtin_interfaces/Time`` (sec >= 0,
    nanosec < 1e9).

    The wire allows any int32 / uint32; read as ``sec + nanosec``, an out-of-range nanosec
    silently names another time ((sec - 1, nanosec + 1e9) is a valid stamp in disguise), so
    such a stamp is refused rather than matched or scheduled.
    """
    if stamp.sec < 0 or stamp.nanosec >= 1_000_000_000:
        raise MessageError(
            f"{field} ({stamp.sec} s, {stamp.nanosec} ns) is not a valid time: sec must be "
            ">= 0 and nanosec < 1e9"
        )


def stamp_to_ns(stamp: Time) -> int:
    """A ``builtin_interfaces/Time`` as integer nanoseconds (0 = unset)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stamp_to_seconds(stamp: Time) -> float:
    """A ``builtin_interfaces/Time`` (or Duration) as float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def ns_to_stamp(nanoseconds: int) -> Time:
    """Integer nanoseconds as a ``builtin_interfaces/Time``."""
    sec, nanosec = divmod(int(nanoseconds), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def chunk_to_msg(
    rows: np.ndarray,
    *,
    stamp: Time,
    frame_id: str,
    action_space: str,
    dt: float,
    dim_names: Sequence[str],
    normalized: bool,
) -> ActionChunk:
    """An ``ActionChunk`` holding the ``(horizon, dim)`` array ``rows``."""
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2:
        raise ValueError(f"rows must be (horizon, dim), got shape {rows.shape}")
    if dim_names and len(dim_names) != rows.shape[1]:
        raise ValueError(f"{len(dim_names)} dim_names for {rows.shape[1]} columns")
    msg = ActionChunk(
        action_space=action_space,
        normalized=normalized,
        dt=float(dt),
        horizon=rows.shape[0],
        dim=rows.shape[1],
        dim_names=list(dim_names),
    )
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.data = rows.reshape(-1)  # float32 array: no per-element Python conversion
    return msg


def chunk_from_msg(msg: ActionChunk, field: str = "chunk") -> np.ndarray:
    """The ``(horizon, dim)`` float32 rows of an ``ActionChunk``; MessageError if malformed."""
    data = np.asarray(msg.data, dtype=np.float32).reshape(-1)
    if msg.horizon < 1 or msg.dim < 1:
        raise MessageError(f"{field}: horizon and dim must be >= 1, got {msg.horizon}x{msg.dim}")
    if data.size != msg.horizon * msg.dim:
        raise MessageError(
            f"{field}: len(data) = {data.size} != horizon * dim = {msg.horizon} * {msg.dim}"
        )
    if msg.dim_names and len(msg.dim_names) != msg.dim:
        raise MessageError(f"{field}: {len(msg.dim_names)} dim_names for dim {msg.dim}")
    if not np.all(np.isfinite(data)):
        raise MessageError(f"{field}: data contains NaN or Inf")
    return data.reshape(msg.horizon, msg.dim)


def chunk_request(msg: ActionChunk, max_points: int = 0) -> ChunkRequest:
    """What the arm controller executes from an ``ActionChunk`` (checked by ``validate_chunk``);
    ChunkRejected if its stamp is not a valid time."""
    try:
        check_time(msg.header.stamp, "header.stamp")
    except MessageError as error:
        raise ChunkRejected(str(error)) from None
    return ChunkRequest(
        action_space=msg.action_space,
        stamp=stamp_to_seconds(msg.header.stamp),
        dt=float(msg.dt),
        horizon=int(msg.horizon),
        dim=int(msg.dim),
        data=np.asarray(msg.data, dtype=np.float64),
        normalized=bool(msg.normalized),
        dim_names=tuple(msg.dim_names),
        max_points=int(max_points),
        frame_id=msg.header.frame_id,
    )


def seconds_to_duration(seconds: float) -> Duration:
    """Non-negative float seconds as a ``builtin_interfaces/Duration``."""
    sec = math.floor(seconds)
    return Duration(sec=int(sec), nanosec=min(int((seconds - sec) * 1e9), 999_999_999))


def joint_trajectory_msg(
    joint_names: Sequence[str], times_from_start: Sequence[float], positions: np.ndarray
) -> JointTrajectory:
    """A ``JointTrajectory`` with a zero stamp (start on receipt): one point per knot."""
    msg = JointTrajectory(joint_names=list(joint_names))
    for t, q in zip(times_from_start, positions, strict=True):
        point = JointTrajectoryPoint(positions=[float(v) for v in q])
        point.time_from_start = seconds_to_duration(t)
        msg.points.append(point)
    return msg


def joint_positions(msg: Any, names: Sequence[str]) -> np.ndarray | None:
    """Positions of the named joints of a ``sensor_msgs/JointState`` (rclpy or rosbags message).

    None when a name is missing or a value is not finite: the caller decides how loudly to skip.
    """
    return _named_values(msg, names, msg.position)


def joint_velocities(msg: Any, names: Sequence[str]) -> np.ndarray | None:
    """Velocities of the named joints of a ``sensor_msgs/JointState`` (rad/s); None when the
    message carries no velocities (the field is optional), a name is missing or a value is not
    finite."""
    return _named_values(msg, names, msg.velocity)


def _named_values(msg: Any, names: Sequence[str], values: Sequence[float]) -> np.ndarray | None:
    index = {name: i for i, name in enumerate(msg.name)}
    try:
        picked = np.array([values[index[n]] for n in names], dtype=np.float64)
    except (KeyError, IndexError):
        return None
    return picked if np.all(np.isfinite(picked)) else None


def gripper_opening(msg: Any, finger_joints: Sequence[str], open_sum: float) -> float | None:
    """Gripper opening in [0, 1] (1 = open) of a ``sensor_msgs/JointState``: the finger joint
    positions summed over their sum at a fully open gripper. None when a finger is missing or not
    finite."""
    fingers = joint_positions(msg, finger_joints)
    if fingers is None:
        return None
    return float(np.clip(fingers.sum() / open_sum, 0.0, 1.0))


# encoding -> (channels, channel indices that give R, G, B)
_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


def ros_image_to_rgb(
    encoding: str, height: int, width: int, step: int, data: bytes | bytearray | memoryview
) -> np.ndarray:
    """HxWx3 uint8 RGB copy of a sensor_msgs/Image given its fields.

    ``step`` is the row length in bytes and may exceed ``width * channels`` (row padding);
    the padding is dropped. Alpha is dropped; mono is replicated to three channels.
    """
    if encoding not in _ENCODINGS:
        raise ValueError(
            f"unsupported image encoding {encoding!r} (supported: {', '.join(_ENCODINGS)})"
        )
    channels, rgb_order = _ENCODINGS[encoding]
    if height <= 0 or width <= 0:
        raise ValueError(f"image must not be empty, got {width}x{height}")
    row_bytes = width * channels
    if step < row_bytes:
        raise ValueError(f"step {step} is shorter than one row ({width} px x {channels} B)")
    needed = (height - 1) * step + row_bytes
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size < needed:
        raise ValueError(f"image data has {buffer.size} bytes, {width}x{height} needs {needed}")
    if buffer.size < height * step:  # last row without its padding
        buffer = np.concatenate([buffer, np.zeros(height * step - buffer.size, np.uint8)])
    rows = buffer[: height * step].reshape(height, step)[:, :row_bytes]
    pixels = rows.reshape(height, width, channels)
    return np.ascontiguousarray(pixels[:, :, list(rgb_order)])


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """HxWx3 uint8 RGB of a ``sensor_msgs/Image``: cv_bridge where installed (every encoding it
    knows), else numpy (:data:`SUPPORTED_ENCODINGS`); ValueError naming an unusable image."""
    try:
        from cv_bridge import CvBridge, CvBridgeError
    except ImportError:
        return ros_image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, bytes(msg.data))
    try:
        return np.ascontiguousarray(CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    except CvBridgeError as error:
        raise ValueError(f"image: {error}") from None


def message_class(type_name: str) -> type:
    """The rclpy message class of a ROS type name such as ``sensor_msgs/msg/Image``."""
    package, _, name = type_name.replace("/msg/", "/").partition("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError):
        raise ValueError(f"unknown message type {type_name!r}") from None
