"""Wire format shared by every node: stamps as integer nanoseconds and ``ActionChunk`` <-> arrays.

No rclpy node, no torch: the arm controller, the steering node, the proposer and the bag tools all
read and write chunks and stamps through these functions. Every ``*_from_msg`` check raises
:class:`MessageError` naming the first bad field, so a node can pass the text straight back to
its client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time

from frs_msgs.msg import ActionChunk


class MessageError(ValueError):
    """A message field is malformed; ``str(err)`` names the field and the problem."""


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


def joint_positions(msg: Any, names: Sequence[str]) -> np.ndarray | None:
    """Positions of the named joints of a ``sensor_msgs/JointState`` (rclpy or rosbags message).

    None when a name is missing or a value is not finite: the caller decides how loudly to skip.
    """
    index = {name: i for i, name in enumerate(msg.name)}
    try:
        values = np.array([msg.position[index[n]] for n in names], dtype=np.float64)
    except (KeyError, IndexError):
        return None
    return values if np.all(np.isfinite(values)) else None
