"""Damped-least-squares inverse kinematics on the simulated arm (MuJoCo FK and ``mj_jacSite``).

The solver itself (DLS step, null-space pull toward a rest posture, tolerances) is
``frs_control.kinematics.solve_dls``, shared with the controller's numpy arm model; this module
feeds it MuJoCo's kinematics on a private scratch ``MjData`` so solving never disturbs the
simulation state.

``rotation_error`` and ``axis_angle_to_matrix`` stay on MuJoCo's ``mju_*`` functions here: the
numpy twins in ``frs_control.kinematics`` agree to ~1e-16 but not bit for bit (MuJoCo's compiled
code fuses multiply-adds), and the simulated benchmark is pinned to these exact numbers.
"""

from __future__ import annotations

import mujoco
import numpy as np

from frs_control.kinematics import DLSSettings, IKResult, solve_dls

__all__ = ["DampedLeastSquaresIK", "IKResult", "axis_angle_to_matrix", "rotation_error"]


def rotation_error(goal: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle vector (world frame, radians) rotating ``current`` onto ``goal`` (3x3 each)."""
    rel = goal @ current.T
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, rel.reshape(-1))
    if quat[0] < 0.0:
        quat = -quat
    vec = np.empty(3)
    mujoco.mju_quat2Vel(vec, quat, 1.0)
    return vec


def axis_angle_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrix of an axis-angle vector (radians)."""
    quat = np.empty(4)
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.eye(3)
    mujoco.mju_axisAngle2Quat(quat, rotvec / angle, angle)
    mat = np.empty(9)
    mujoco.mju_quat2Mat(mat, quat)
    return mat.reshape(3, 3)


class DampedLeastSquaresIK:
    """Position + orientation IK for one site over a fixed set of hinge joints."""

    def __init__(
        self,
        model: mujoco.MjModel,
        site_id: int,
        qpos_adr: np.ndarray,
        dof_adr: np.ndarray,
        joint_range: np.ndarray,
        rest_qpos: np.ndarray | None = None,
        damping: float = 0.01,
        nullspace_gain: float = 0.05,
        rot_weight: float = 0.5,
    ) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.site_id = site_id
        self.qpos_adr = np.asarray(qpos_adr)
        self.dof_adr = np.asarray(dof_adr)
        self.joint_range = np.asarray(joint_range, dtype=float)
        self.rest_qpos = None if rest_qpos is None else np.asarray(rest_qpos, dtype=float)
        self.damping = damping
        self.nullspace_gain = nullspace_gain
        self.rot_weight = rot_weight
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Site position (3,) and rotation matrix (3, 3) at joint vector ``q``."""
        self.data.qpos[self.qpos_adr] = q
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site_id].copy(), self.data.site_xmat[self.site_id].reshape(
            3, 3
        ).copy()

    def solve(
        self,
        goal_pos: np.ndarray,
        goal_rot: np.ndarray,
        q_init: np.ndarray,
        max_iters: int = 10,
        pos_tol: float = 1e-4,
        rot_tol: float = 1e-3,
    ) -> IKResult:
        """Iterate DLS steps from ``q_init`` until the pose error is below tolerance."""
        settings = DLSSettings(
            self.damping, self.nullspace_gain, self.rot_weight, pos_tol=pos_tol, rot_tol=rot_tol
        )
        return solve_dls(
            self._pose,
            self._jacobian,
            goal_pos,
            goal_rot,
            q_init,
            self.joint_range,
            self.rest_qpos,
            settings,
            max_iters=max_iters,
            rotation_error=rotation_error,  # MuJoCo's arithmetic, which the benchmark is pinned to
        )

    def _pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.data.qpos[self.qpos_adr] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        return self.data.site_xpos[self.site_id], self.data.site_xmat[self.site_id].reshape(3, 3)

    def _jacobian(self) -> tuple[np.ndarray, np.ndarray]:
        mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site_id)
        return self._jacp[:, self.dof_adr], self._jacr[:, self.dof_adr]
