"""Arm kinematics for the controller: forward kinematics, Jacobian and DLS IK of the EE site.

The model is the same MuJoCo Panda the simulation loads at run time from gymnasium-robotics
(``sim.scene.build_model``), so the controller and the simulated robot agree on the chain exactly;
on a real FR3 the difference to the FR3 chain is a few millimetres, well inside what the closed
control loop corrects. IK is ``sim.ik.DampedLeastSquaresIK`` (one solver, one place).

Every pose here is in the robot base frame (``fr3_link0``): positions in metres, rotations as 3x3
matrices; the Jacobian maps joint velocities (rad/s) to the EE twist ``(v, omega)`` in that frame.
Instances keep scratch ``MjData``: use one per thread.
"""

from __future__ import annotations

import mujoco
import numpy as np

from frs_sim import scene as sc
from frs_sim.ik import DampedLeastSquaresIK, IKResult

#: Null-space rest posture (the simulation's IK seed): elbow up, gripper pointing down.
REST_QPOS = np.array([0.0, -0.2, 0.0, -2.5, 0.0, 0.75, 0.0])
N_JOINTS = 7


class ArmKinematics:
    """FK / Jacobian / IK of the Panda end-effector site (``fr3_hand_tcp`` on the ROS side)."""

    def __init__(self, model: mujoco.MjModel | None = None) -> None:
        """Compile the simulation's Panda model unless one is given."""
        self.model = model if model is not None else sc.build_model()
        self.idx = sc.index_scene(self.model)
        self._data = mujoco.MjData(self.model)
        self._jacp = np.zeros((3, self.model.nv))
        self._jacr = np.zeros((3, self.model.nv))
        self.ik = DampedLeastSquaresIK(
            self.model,
            self.idx.ee_site,
            self.idx.arm_qpos,
            self.idx.arm_dof,
            self.idx.arm_range,
            rest_qpos=REST_QPOS,
        )

    @property
    def joint_range(self) -> np.ndarray:
        """(7, 2) joint position limits of the model, radians."""
        return self.idx.arm_range.copy()

    def _kinematics(self, q: np.ndarray) -> None:
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (N_JOINTS,):
            raise ValueError(f"expected {N_JOINTS} joint positions, got shape {q.shape}")
        self._data.qpos[self.idx.arm_qpos] = q
        mujoco.mj_kinematics(self.model, self._data)
        mujoco.mj_comPos(self.model, self._data)

    def _base(self) -> tuple[np.ndarray, np.ndarray]:
        body = self.idx.base_body
        return self._data.xpos[body].copy(), self._data.xmat[body].reshape(3, 3).copy()

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """EE position (3,) and rotation (3, 3) in the base frame at joint positions ``q``."""
        self._kinematics(q)
        base_pos, base_rot = self._base()
        site = self.idx.ee_site
        pos = self._data.site_xpos[site]
        rot = self._data.site_xmat[site].reshape(3, 3)
        return base_rot.T @ (pos - base_pos), base_rot.T @ rot

    def jacobian(self, q: np.ndarray) -> np.ndarray:
        """(6, 7) EE Jacobian in the base frame: rows 0-2 linear (m/rad), 3-5 angular (1)."""
        self._kinematics(q)
        mujoco.mj_jacSite(self.model, self._data, self._jacp, self._jacr, self.idx.ee_site)
        _, base_rot = self._base()
        dof = self.idx.arm_dof
        return np.vstack([base_rot.T @ self._jacp[:, dof], base_rot.T @ self._jacr[:, dof]])

    def inverse(
        self,
        goal_pos: np.ndarray,
        goal_rot: np.ndarray,
        q_init: np.ndarray,
        max_iters: int = 10,
    ) -> IKResult:
        """Joint positions reaching the base-frame goal pose, iterating DLS from ``q_init``."""
        self._kinematics(q_init)
        base_pos, base_rot = self._base()
        world_pos = base_pos + base_rot @ np.asarray(goal_pos, dtype=np.float64)
        world_rot = base_rot @ np.asarray(goal_rot, dtype=np.float64)
        return self.ik.solve(world_pos, world_rot, q_init, max_iters=max_iters)
