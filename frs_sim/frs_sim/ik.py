"""Damped-least-squares inverse kinematics on the arm Jacobian (``mj_jacSite``).

The solver works on a private scratch ``MjData`` so solving never disturbs the simulation state.
Each iteration runs forward kinematics, reads the 6 x 7 site Jacobian and takes a damped
pseudo-inverse step toward the goal pose, plus a small null-space pull toward a rest posture that
keeps the elbow from drifting over long episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np


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


@dataclass(frozen=True)
class IKResult:
    """Solution joint vector and the residual pose error it leaves."""

    qpos: np.ndarray  # (7,) radians
    pos_error: float  # metres
    rot_error: float  # radians
    iterations: int


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
        q = np.clip(np.asarray(q_init, dtype=float).copy(), *self.joint_range.T)
        lam2 = self.damping**2
        pos_err_norm = rot_err_norm = np.inf
        iterations = 0
        for iterations in range(1, max_iters + 1):  # noqa: B007 (reported in the result)
            self.data.qpos[self.qpos_adr] = q
            mujoco.mj_kinematics(self.model, self.data)
            mujoco.mj_comPos(self.model, self.data)
            pos = self.data.site_xpos[self.site_id]
            rot = self.data.site_xmat[self.site_id].reshape(3, 3)
            err_p = goal_pos - pos
            err_r = rotation_error(goal_rot, rot)
            pos_err_norm, rot_err_norm = float(np.linalg.norm(err_p)), float(np.linalg.norm(err_r))
            if pos_err_norm < pos_tol and rot_err_norm < rot_tol:
                break
            mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site_id)
            jac = np.vstack(
                [self._jacp[:, self.dof_adr], self.rot_weight * self._jacr[:, self.dof_adr]]
            )
            err = np.concatenate([err_p, self.rot_weight * err_r])
            jjt = jac @ jac.T + lam2 * np.eye(6)
            pinv = jac.T @ np.linalg.solve(jjt, np.eye(6))
            dq = pinv @ err
            if self.rest_qpos is not None:
                null = np.eye(len(q)) - pinv @ jac
                dq += null @ (self.nullspace_gain * (self.rest_qpos - q))
            q = np.clip(q + dq, *self.joint_range.T)
        return IKResult(q, pos_err_norm, rot_err_norm, iterations)
