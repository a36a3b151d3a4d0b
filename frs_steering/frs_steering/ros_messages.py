"""Conversions between ``frs_msgs`` messages and the library's types (no rclpy, no node).

One place for the wire format, shared by the steering node and the proposer: stamps as integer
nanoseconds, ``ActionChunk`` <-> arrays, ``CoarseReference`` <-> :class:`CoarseProposal`. Every
``*_from_msg`` check raises :class:`MessageError` naming the first bad field, so a node can pass
the text straight back to its client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Vector3
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from frs_msgs.msg import ActionChunk, CoarseReference
from frs_steering.reasoning import CoarseProposal, Gripper, Source

#: How far a direction's norm may be from 1 and still count as a unit vector (float32 senders).
UNIT_TOLERANCE = 1e-3


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


def path_markers(
    paths: Mapping[str, tuple[np.ndarray | None, tuple[float, float, float, float]]],
    *,
    stamp: Time,
    frame_id: str,
    width: float = 0.004,
) -> MarkerArray:
    """One LINE_STRIP per namespace: ``{ns: ((n, 3) points or None, rgba)}``; None deletes it."""
    markers = MarkerArray()
    for index, (namespace, (points, colour)) in enumerate(paths.items()):
        marker = Marker(ns=namespace, id=index, type=Marker.LINE_STRIP)
        marker.header.stamp = stamp
        marker.header.frame_id = frame_id
        if points is None:
            marker.action = Marker.DELETE
            markers.markers.append(marker)
            continue
        marker.action = Marker.ADD
        marker.pose.orientation.w = 1.0
        marker.scale.x = width
        r, g, b, a = colour
        marker.color = ColorRGBA(r=r, g=g, b=b, a=a)
        marker.points = [Point(x=p[0], y=p[1], z=p[2]) for p in np.asarray(points).tolist()]
        markers.markers.append(marker)
    return markers


def _vector(msg: Vector3 | Point) -> np.ndarray:
    return np.array([msg.x, msg.y, msg.z], dtype=np.float64)


def proposal_from_msg(msg: CoarseReference) -> CoarseProposal:
    """The :class:`CoarseProposal` a ``CoarseReference`` carries (its direction part).

    A direction within ``UNIT_TOLERANCE`` of unit length is renormalised exactly; a deferring
    message's direction is ignored. The optional full ``chunk`` is not looked at here.
    """
    try:
        source = Source(msg.source)
    except ValueError:
        raise MessageError(f"reference.source {msg.source} is not one of 0, 1, 2") from None
    try:
        gripper = Gripper(msg.gripper)
    except ValueError:
        raise MessageError(f"reference.gripper {msg.gripper} is not one of 0, 1, 2") from None
    magnitude = float(msg.magnitude)
    if not math.isfinite(magnitude) or not 0.0 <= magnitude <= 1.0:
        raise MessageError(f"reference.magnitude must be in [0, 1], got {magnitude}")
    target = None
    if msg.has_target:
        target = _vector(msg.target)
        if not np.all(np.isfinite(target)):
            raise MessageError(f"reference.target must be finite, got {target.tolist()}")
    if msg.defer:
        return CoarseProposal(
            source=source, defer=True, target=target, reason="the reasoner deferred"
        )
    direction = _vector(msg.direction)
    if not np.all(np.isfinite(direction)):
        raise MessageError(f"reference.direction must be finite, got {direction.tolist()}")
    norm = float(np.linalg.norm(direction))
    if norm != 0.0 and abs(norm - 1.0) > UNIT_TOLERANCE:
        raise MessageError(
            f"reference.direction must be a unit vector or zero, got norm {norm:.6g}"
        )
    return CoarseProposal(
        source=source,
        direction=direction / norm if norm else direction,
        magnitude=magnitude,
        gripper=gripper,
        target=target,
    )


def proposal_to_msg(
    proposal: CoarseProposal, *, stamp: Time, frame_id: str, instruction: str
) -> CoarseReference:
    """A ``CoarseReference`` for ``proposal`` (direction form; no full chunk)."""
    msg = CoarseReference(
        source=int(proposal.source),
        instruction=instruction,
        defer=proposal.defer,
        magnitude=float(proposal.magnitude),
        gripper=int(proposal.gripper),
    )
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    x, y, z = (float(c) for c in proposal.direction)
    msg.direction = Vector3(x=x, y=y, z=z)
    if proposal.target is not None:
        msg.has_target = True
        tx, ty, tz = (float(c) for c in proposal.target)
        msg.target = Point(x=tx, y=ty, z=tz)
    return msg
