"""``CoarseReference`` <-> :class:`CoarseProposal` and rviz path markers (no rclpy node).

Stamps and ``ActionChunk`` conversion live in :mod:`frs_control.messages` (one place for the
wire format every node shares); checks raise its :class:`MessageError` naming the bad field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Vector3
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from frs_control.messages import MessageError
from frs_msgs.msg import CoarseReference
from frs_steering.reasoning import CoarseProposal, Gripper, Source

#: How far a direction's norm may be from 1 and still count as a unit vector (float32 senders).
UNIT_TOLERANCE = 1e-3


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
        known = ", ".join(str(int(v)) for v in Source)
        raise MessageError(f"reference.source {msg.source} is not one of {known}") from None
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
