"""The controller's numpy arm model is the simulated Panda: FK, Jacobian and IK against MuJoCo.

``frs_control.kinematics`` carries the Panda chain as numpy constants so a robot PC needs no
MuJoCo; these tests pin it to the model the simulator compiles from gymnasium-robotics.
"""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from frs_control import kinematics as km
from frs_control.kinematics import JOINT_RANGE, REST_QPOS, ArmKinematics
from frs_sim import ik as sim_ik
from frs_sim import scene as sc
from frs_sim.env import HOME_EE_POS, HOME_EE_ROT, FrankaTabletopEnv

N_CONFIGS = 250


class MujocoArm:
    """Base-frame FK and site Jacobian of the simulator's compiled scene (the reference)."""

    def __init__(self) -> None:
        self.model = sc.build_model()
        self.idx = sc.index_scene(self.model)
        self.data = mujoco.MjData(self.model)

    def pose_and_jacobian(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.data.qpos[self.idx.arm_qpos] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        jacp, jacr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        mujoco.mj_jacSite(self.model, self.data, jacp, jacr, self.idx.ee_site)
        base_pos = self.data.xpos[self.idx.base_body]
        base_rot = self.data.xmat[self.idx.base_body].reshape(3, 3)
        pos = base_rot.T @ (self.data.site_xpos[self.idx.ee_site] - base_pos)
        rot = base_rot.T @ self.data.site_xmat[self.idx.ee_site].reshape(3, 3)
        dof = self.idx.arm_dof
        jac = np.vstack([base_rot.T @ jacp[:, dof], base_rot.T @ jacr[:, dof]])
        return pos, rot, jac


@pytest.fixture(scope="module")
def mj() -> MujocoArm:
    return MujocoArm()


@pytest.fixture(scope="module")
def kin() -> ArmKinematics:
    return ArmKinematics()


def _random_configs(n: int, seed: int = 0) -> np.ndarray:
    """Uniform over the whole joint range (plus the rest posture and the range's corners)."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(JOINT_RANGE[:, 0], JOINT_RANGE[:, 1], size=(n, 7))
    return np.vstack([REST_QPOS, JOINT_RANGE[:, 0], JOINT_RANGE[:, 1], q])


def test_joint_range_matches_the_model(mj: MujocoArm, kin: ArmKinematics) -> None:
    np.testing.assert_array_equal(kin.joint_range, mj.idx.arm_range)


def test_forward_and_jacobian_equal_mujoco_over_the_joint_range(
    mj: MujocoArm, kin: ArmKinematics
) -> None:
    configs = _random_configs(N_CONFIGS)
    assert len(configs) >= 200
    worst = np.zeros(3)
    for q in configs:
        ref_pos, ref_rot, ref_jac = mj.pose_and_jacobian(q)
        pos, rot = kin.forward(q)
        jac = kin.jacobian(q)
        assert jac.shape == (6, 7)
        errors = [np.abs(pos - ref_pos).max(), np.abs(rot - ref_rot).max()]
        worst = np.maximum(worst, [*errors, np.abs(jac - ref_jac).max()])
    assert np.all(worst < 1e-6), f"max |error| position, rotation, Jacobian: {worst}"


def test_forward_matches_the_simulated_robot(kin: ArmKinematics) -> None:
    env = FrankaTabletopEnv(tasks="novel", embed_fn=lambda _t: np.zeros(384, np.float32))
    env.reset(seed=1)
    q, _ = env.arm_joint_state()
    pos, rot = kin.forward(q)
    sim_pos, sim_quat = env.ee_pose_in_base()
    np.testing.assert_allclose(pos, sim_pos, atol=1e-9)
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, rot.reshape(-1))
    assert abs(abs(float(quat @ sim_quat)) - 1.0) < 1e-9
    env.close()


def test_rotation_helpers_equal_mujoco() -> None:
    rng = np.random.default_rng(3)
    for scale in (1e-9, 1e-4, 0.1, 1.0, 3.0):
        for _ in range(50):
            rotvec = rng.normal(size=3) * scale
            np.testing.assert_allclose(
                km.axis_angle_to_matrix(rotvec), sim_ik.axis_angle_to_matrix(rotvec), atol=1e-14
            )
            current = sim_ik.axis_angle_to_matrix(rng.normal(size=3))
            goal = sim_ik.axis_angle_to_matrix(rotvec) @ current
            np.testing.assert_allclose(
                km.rotation_error(goal, current), sim_ik.rotation_error(goal, current), atol=1e-12
            )


def test_inverse_reaches_targets_and_agrees_with_the_simulator_ik(
    mj: MujocoArm, kin: ArmKinematics
) -> None:
    sim_solver = sim_ik.DampedLeastSquaresIK(
        mj.model,
        mj.idx.ee_site,
        mj.idx.arm_qpos,
        mj.idx.arm_dof,
        mj.idx.arm_range,
        rest_qpos=REST_QPOS,
    )
    rng = np.random.default_rng(2)
    for _ in range(20):
        q_goal = np.clip(REST_QPOS + rng.uniform(-0.5, 0.5, 7), *JOINT_RANGE.T)
        goal_pos, goal_rot = kin.forward(q_goal)
        result = kin.inverse(goal_pos, goal_rot, REST_QPOS, max_iters=200)
        pos, rot = kin.forward(result.qpos)
        assert np.linalg.norm(pos - goal_pos) < 1e-3
        assert np.linalg.norm(km.rotation_error(goal_rot, rot)) < 1e-2
        assert result.pos_error < 1e-3
        # The base sits at the world origin, so the simulator's solver sees the same goal.
        sim = sim_solver.solve(goal_pos, goal_rot, REST_QPOS, max_iters=200)
        assert sim.iterations == result.iterations
        np.testing.assert_allclose(result.qpos, sim.qpos, atol=1e-8)


def test_inverse_home_pose_points_down(kin: ArmKinematics) -> None:
    result = kin.inverse(HOME_EE_POS, HOME_EE_ROT, REST_QPOS, max_iters=200)
    assert result.pos_error < 1e-4 and result.rot_error < 1e-3
    assert np.all(result.qpos >= kin.joint_range[:, 0])
    assert np.all(result.qpos <= kin.joint_range[:, 1])
