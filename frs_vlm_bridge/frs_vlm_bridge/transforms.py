"""Static extrinsics without tf2: carry points from a sensor frame into the robot base frame.

Where tf2_ros is installed the node looks transforms up; elsewhere the rig's fixed camera
extrinsics come from parameters and this module applies them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


def quaternion_to_matrix(quaternion_xyzw: Iterable[float]) -> np.ndarray:
    """3x3 rotation matrix of a quaternion given as (x, y, z, w), normalised first."""
    q = np.asarray(list(quaternion_xyzw), dtype=np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise ValueError(f"quaternion must be 4 finite numbers (x, y, z, w), got {q.tolist()}")
    norm = float(np.linalg.norm(q))
    if norm < 1e-9:
        raise ValueError("quaternion must be nonzero")
    x, y, z, w = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


@dataclass(frozen=True, eq=False)
class StaticTransform:
    """Pose of a child frame (e.g. the camera) in a parent frame (e.g. ``fr3_link0``).

    Same convention as tf2 and ``static_transform_publisher``: ``translation`` is the child
    origin in the parent frame (metres) and ``quaternion_xyzw`` the child's orientation in
    the parent, so ``apply`` maps a point expressed in the child frame into the parent frame.
    """

    translation: tuple[float, float, float]
    quaternion_xyzw: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    parent_frame: str = "fr3_link0"
    child_frame: str = ""

    def __post_init__(self) -> None:
        translation = np.asarray(list(self.translation), dtype=np.float64)
        if translation.shape != (3,) or not np.all(np.isfinite(translation)):
            raise ValueError(f"translation must be 3 finite numbers, got {self.translation}")
        object.__setattr__(self, "translation", tuple(float(t) for t in translation))
        quaternion_to_matrix(self.quaternion_xyzw)  # validates
        object.__setattr__(self, "quaternion_xyzw", tuple(float(c) for c in self.quaternion_xyzw))

    @property
    def rotation(self) -> np.ndarray:
        """3x3 rotation taking child-frame vectors to parent-frame vectors."""
        return quaternion_to_matrix(self.quaternion_xyzw)

    def apply(self, points: Iterable[float] | np.ndarray) -> np.ndarray:
        """Points (3,) or (N, 3) in the child frame, expressed in the parent frame."""
        array = np.asarray(points, dtype=np.float64)
        if array.shape[-1:] != (3,) or array.ndim > 2:
            raise ValueError(f"points must have shape (3,) or (N, 3), got {array.shape}")
        return array @ self.rotation.T + np.asarray(self.translation)
