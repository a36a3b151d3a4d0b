"""ROS messages the simulated robot publishes, built from numpy arrays (no cv_bridge needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from geometry_msgs.msg import Pose
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from frs_msgs.msg import ObjectStates


def rgb_image(rgb: np.ndarray, header: Header) -> Image:
    """``rgb8`` image from an (H, W, 3) uint8 array."""
    height, width = rgb.shape[:2]
    return Image(
        header=header,
        height=height,
        width=width,
        encoding="rgb8",
        is_bigendian=0,
        step=width * 3,
        data=np.ascontiguousarray(rgb, dtype=np.uint8).tobytes(),
    )


def pinhole_camera_info(
    header: Header, width: int, height: int, focal: float, cx: float, cy: float
) -> CameraInfo:
    """Calibration of an undistorted pinhole camera with square pixels."""
    return CameraInfo(
        header=header,
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=[0.0] * 5,
        k=[focal, 0.0, cx, 0.0, focal, cy, 0.0, 0.0, 1.0],
        r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p=[focal, 0.0, cx, 0.0, 0.0, focal, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    )


def pose(position: Sequence[float], quat_wxyz: Sequence[float]) -> Pose:
    """Pose from a position and a (w, x, y, z) quaternion."""
    msg = Pose()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in position)
    w, x, y, z = (float(v) for v in quat_wxyz)
    msg.orientation.w, msg.orientation.x = w, x
    msg.orientation.y, msg.orientation.z = y, z
    return msg


def object_states(
    header: Header,
    cubes: Mapping[str, tuple[np.ndarray, np.ndarray]],
    mats: Mapping[str, np.ndarray],
) -> ObjectStates:
    """Ground truth: each cube (``<name>_cube``: position, w-x-y-z quaternion), then each mat
    (``<name>_mat``: position, identity orientation)."""
    msg = ObjectStates(header=header)
    for name, (position, quat) in cubes.items():
        msg.names.append(f"{name}_cube")
        msg.kinds.append(ObjectStates.KIND_OBJECT)
        msg.poses.append(pose(position, quat))
    for name, position in mats.items():
        msg.names.append(f"{name}_mat")
        msg.kinds.append(ObjectStates.KIND_TARGET)
        msg.poses.append(pose(position, (1.0, 0.0, 0.0, 0.0)))
    return msg
