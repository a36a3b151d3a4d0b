"""Arm kinematics for the controller in pure numpy: FK, Jacobian and DLS IK of the EE site.

The chain is the Franka Panda the simulation loads from gymnasium-robotics (``kitchen_franka``):
the same link offsets, joint axes, joint limits and end-effector site (between the finger pads),
so the controller and the simulated robot agree on the arm exactly (``frs_sim/test/
test_arm_model.py`` compares FK and Jacobian with MuJoCo's). On a real FR3 the difference to the
FR3 chain is a few millimetres, well inside what the closed control loop corrects. No MuJoCo, no
simulator: this runs on a robot PC with numpy alone.

Every pose here is in the robot base frame (``fr3_link0``): positions in metres, rotations as 3x3
matrices; the Jacobian maps joint velocities (rad/s) to the EE twist ``(v, omega)`` in that frame.

The damped-least-squares solver (:func:`solve_dls`) is shared with the simulator's own IK
(``frs_sim.ik``), which feeds it MuJoCo's kinematics: one solver, one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

N_JOINTS = 7

#: Null-space rest posture (the simulation's IK seed): elbow up, gripper pointing down.
REST_QPOS = np.array([0.0, -0.2, 0.0, -2.5, 0.0, 0.75, 0.0])


# ---------------------------------------------------------------------- rotations
def quat_to_matrix(quat: np.ndarray) -> np.ndarray:
    """Rotation matrix of a unit quaternion ``(w, x, y, z)`` (normalized here)."""
    w, x, y, z = np.asarray(quat, dtype=np.float64) / np.linalg.norm(quat)
    return np.array(
        [
            [w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z],
        ]
    )


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def euler_xyz_to_matrix(euler: tuple[float, float, float]) -> np.ndarray:
    """Rotation of intrinsic x-y-z Euler angles (radians; MJCF's default ``eulerseq``)."""
    return _rot_x(euler[0]) @ _rot_y(euler[1]) @ _rot_z(euler[2])


def matrix_to_quat(mat: np.ndarray) -> np.ndarray:
    """Unit quaternion ``(w, x, y, z)`` of a rotation matrix (Shepperd's branch on the trace)."""
    m = [float(v) for v in np.asarray(mat, dtype=np.float64).reshape(9)]
    if m[0] + m[4] + m[8] > 0:
        s = 0.5 * math.sqrt(1 + m[0] + m[4] + m[8])
        q = [s, 0.25 * (m[7] - m[5]) / s, 0.25 * (m[2] - m[6]) / s, 0.25 * (m[3] - m[1]) / s]
    elif m[0] > m[4] and m[0] > m[8]:
        s = 0.5 * math.sqrt(1 + m[0] - m[4] - m[8])
        q = [0.25 * (m[7] - m[5]) / s, s, 0.25 * (m[1] + m[3]) / s, 0.25 * (m[2] + m[6]) / s]
    elif m[4] > m[8]:
        s = 0.5 * math.sqrt(1 - m[0] + m[4] - m[8])
        q = [0.25 * (m[2] - m[6]) / s, 0.25 * (m[1] + m[3]) / s, s, 0.25 * (m[5] + m[7]) / s]
    else:
        s = 0.5 * math.sqrt(1 - m[0] - m[4] + m[8])
        q = [0.25 * (m[3] - m[1]) / s, 0.25 * (m[2] + m[6]) / s, 0.25 * (m[5] + m[7]) / s, s]
    norm = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    return np.array(q) / norm


def rotation_error(goal: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle vector (radians) rotating ``current`` onto ``goal`` (3x3 each, same frame)."""
    quat = matrix_to_quat(goal @ np.asarray(current).T)
    if quat[0] < 0.0:
        quat = -quat
    sin_half = float(np.linalg.norm(quat[1:]))
    if sin_half < 1e-15:
        return np.zeros(3)
    angle = 2.0 * math.atan2(sin_half, float(quat[0]))  # in [0, pi] since w >= 0
    return quat[1:] * (angle / sin_half)


def axis_angle_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrix of an axis-angle vector (radians)."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.eye(3)
    half = 0.5 * angle
    return quat_to_matrix(np.concatenate([[math.cos(half)], rotvec / angle * math.sin(half)]))


# ---------------------------------------------------------------------- the Panda chain
@dataclass(frozen=True)
class _Link:
    """A body of the chain: its frame in the parent's frame; its hinge turns about its local z."""

    pos: tuple[float, float, float]
    rot: np.ndarray  # (3, 3)


_Q = quat_to_matrix
# Link frames of panda0_link1..7 relative to their parent (MJCF body pos / quat / euler). Each
# hinge sits at its body's origin and turns about the body's z axis.
_CHAIN: tuple[_Link, ...] = (
    _Link((0.0, 0.0, 0.333), np.eye(3)),
    _Link((0.0, 0.0, 0.0), _Q([0.707107, -0.707107, 0.0, 0.0])),
    _Link((0.0, -0.316, 0.0), _Q([0.707107, 0.707107, 0.0, 0.0])),
    _Link((0.0825, 0.0, 0.0), _Q([0.707107, 0.707107, 0.0, 0.0])),
    _Link((-0.0825, 0.384, 0.0), _Q([0.707107, -0.707107, 0.0, 0.0])),
    _Link((0.0, 0.0, 0.0), euler_xyz_to_matrix((1.57, 0.0, 1.57))),
    _Link((0.088, 0.0, 0.0), euler_xyz_to_matrix((1.57, 0.0, 0.7854))),
)
# The ``end_effector`` site in panda0_link7 (between the finger pads; ROS: fr3_hand_tcp).
_EE_SITE = _Link((0.0, 0.0, 0.210), euler_xyz_to_matrix((0.0, 0.0, -0.785398)))
#: (7, 2) joint position limits of the model, radians.
JOINT_RANGE = np.array(
    [
        [-2.8973, 2.8973],
        [-1.7628, 1.7628],
        [-2.8973, 2.8973],
        [-3.0718, -0.4],
        [-2.8973, 2.8973],
        [-1.6573, 2.1127],
        [-2.8973, 2.8973],
    ]
)


# ---------------------------------------------------------------------- the DLS solver
@dataclass(frozen=True)
class IKResult:
    """Solution joint vector and the residual pose error it leaves."""

    qpos: np.ndarray  # (7,) radians
    pos_error: float  # metres
    rot_error: float  # radians
    iterations: int


@dataclass(frozen=True)
class DLSSettings:
    """Damped-least-squares gains, shared by the controller's and the simulator's IK."""

    damping: float = 0.01  # lambda of (J J^T + lambda^2 I)
    nullspace_gain: float = 0.05  # pull toward the rest posture per iteration
    rot_weight: float = 0.5  # weight of the rotation rows against the position rows (m / rad)
    pos_tol: float = 1e-4  # m
    rot_tol: float = 1e-3  # rad


def dls_step(
    jac_pos: np.ndarray,
    jac_rot: np.ndarray,
    err_pos: np.ndarray,
    err_rot: np.ndarray,
    q: np.ndarray,
    rest_qpos: np.ndarray | None,
    settings: DLSSettings,
) -> np.ndarray:
    """One damped pseudo-inverse joint step toward the goal, plus a null-space pull to rest."""
    jac = np.vstack([jac_pos, settings.rot_weight * jac_rot])
    err = np.concatenate([err_pos, settings.rot_weight * err_rot])
    jjt = jac @ jac.T + settings.damping**2 * np.eye(6)
    pinv = jac.T @ np.linalg.solve(jjt, np.eye(6))
    dq = pinv @ err
    if rest_qpos is not None:
        null = np.eye(len(q)) - pinv @ jac
        dq += null @ (settings.nullspace_gain * (rest_qpos - q))
    return dq


#: Poses the site at q: returns its position (3,) and rotation (3, 3).
PoseFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: The site Jacobian (3, n) position rows and (3, n) rotation rows at the last posed q.
JacobianFn = Callable[[], tuple[np.ndarray, np.ndarray]]


def solve_dls(
    pose: PoseFn,
    jacobian: JacobianFn,
    goal_pos: np.ndarray,
    goal_rot: np.ndarray,
    q_init: np.ndarray,
    joint_range: np.ndarray,
    rest_qpos: np.ndarray | None,
    settings: DLSSettings,
    max_iters: int = 10,
    rotation_error: Callable[[np.ndarray, np.ndarray], np.ndarray] = rotation_error,
) -> IKResult:
    """Iterate DLS steps from ``q_init`` (clipped to range) until the pose error is in tolerance.

    ``pose`` / ``jacobian`` supply the kinematics (this module's chain or MuJoCo's);
    ``rotation_error`` may be swapped for a bit-identical twin of the caller's own arithmetic.
    """
    low, high = joint_range.T
    q = np.clip(np.asarray(q_init, dtype=float).copy(), low, high)
    pos_err_norm = rot_err_norm = np.inf
    iterations = 0
    for iterations in range(1, max_iters + 1):  # noqa: B007 (reported in the result)
        pos, rot = pose(q)
        err_p = goal_pos - pos
        err_r = rotation_error(goal_rot, rot)
        pos_err_norm, rot_err_norm = float(np.linalg.norm(err_p)), float(np.linalg.norm(err_r))
        if pos_err_norm < settings.pos_tol and rot_err_norm < settings.rot_tol:
            break
        jac_pos, jac_rot = jacobian()
        q = np.clip(q + dls_step(jac_pos, jac_rot, err_p, err_r, q, rest_qpos, settings), low, high)
    return IKResult(q, pos_err_norm, rot_err_norm, iterations)


# ---------------------------------------------------------------------- the arm
class ArmKinematics:
    """FK / Jacobian / IK of the Panda end-effector site (``fr3_hand_tcp`` on the ROS side).

    Instances keep the last posed chain as scratch state: use one per thread.
    """

    def __init__(self, settings: DLSSettings | None = None) -> None:
        self.settings = settings or DLSSettings()
        self._anchors = np.zeros((N_JOINTS, 3))  # joint origins, base frame
        self._axes = np.zeros((N_JOINTS, 3))  # joint axes, base frame
        self._ee_pos = np.zeros(3)
        self._ee_rot = np.eye(3)

    @property
    def joint_range(self) -> np.ndarray:
        """(7, 2) joint position limits of the model, radians."""
        return JOINT_RANGE.copy()

    def _pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Walk the chain at ``q``; keep joint anchors/axes for the Jacobian."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (N_JOINTS,):
            raise ValueError(f"expected {N_JOINTS} joint positions, got shape {q.shape}")
        pos, rot = np.zeros(3), np.eye(3)
        for i, link in enumerate(_CHAIN):
            pos = pos + rot @ link.pos
            rot = rot @ link.rot
            self._anchors[i] = pos
            self._axes[i] = rot[:, 2]
            rot = rot @ _rot_z(float(q[i]))
        self._ee_pos = pos + rot @ _EE_SITE.pos
        self._ee_rot = rot @ _EE_SITE.rot
        return self._ee_pos, self._ee_rot

    def _jacobian(self) -> tuple[np.ndarray, np.ndarray]:
        """(3, 7) linear and angular Jacobian rows at the last posed configuration."""
        linear = np.cross(self._axes, self._ee_pos - self._anchors).T
        return linear, self._axes.T.copy()

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """EE position (3,) and rotation (3, 3) in the base frame at joint positions ``q``."""
        pos, rot = self._pose(q)
        return pos.copy(), rot.copy()

    def jacobian(self, q: np.ndarray) -> np.ndarray:
        """(6, 7) EE Jacobian in the base frame: rows 0-2 linear (m/rad), 3-5 angular (1)."""
        self._pose(q)
        return np.vstack(self._jacobian())

    def inverse(
        self,
        goal_pos: np.ndarray,
        goal_rot: np.ndarray,
        q_init: np.ndarray,
        max_iters: int = 10,
    ) -> IKResult:
        """Joint positions reaching the base-frame goal pose, iterating DLS from ``q_init``."""
        return solve_dls(
            self._pose,
            self._jacobian,
            np.asarray(goal_pos, dtype=np.float64),
            np.asarray(goal_rot, dtype=np.float64),
            q_init,
            JOINT_RANGE,
            REST_QPOS,
            self.settings,
            max_iters=max_iters,
        )
