"""Arm kinematics (numpy): the Jacobian matches finite differences, IK inverts FK.

The chain equals the simulated Panda: frs_sim/test/test_arm_model.py checks it against MuJoCo.
"""

from __future__ import annotations

import numpy as np
import pytest

from frs_control.kinematics import REST_QPOS, ArmKinematics, rotation_error

# The simulation's home pose: 45 cm ahead, 25 cm up, gripper pointing down (base frame).
HOME_EE_POS = np.array([0.45, 0.0, 0.25])
HOME_EE_ROT = np.diag([1.0, -1.0, -1.0])


@pytest.fixture(scope="module")
def kin() -> ArmKinematics:
    return ArmKinematics()


def _poses(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return REST_QPOS + rng.uniform(-0.4, 0.4, size=(n, 7))


@pytest.mark.parametrize("q", list(_poses(3)))
def test_jacobian_matches_finite_differences(kin: ArmKinematics, q: np.ndarray) -> None:
    jac = kin.jacobian(q)
    assert jac.shape == (6, 7)
    eps = 1e-6
    pos0, rot0 = kin.forward(q)
    for j in range(7):
        dq = np.zeros(7)
        dq[j] = eps
        pos_p, rot_p = kin.forward(q + dq)
        pos_m, rot_m = kin.forward(q - dq)
        np.testing.assert_allclose((pos_p - pos_m) / (2 * eps), jac[:3, j], atol=1e-6)
        # Angular column: rotation vector of R(q + dq) R(q)^T per unit joint step.
        omega = (rotation_error(rot_p, rot0) - rotation_error(rot_m, rot0)) / (2 * eps)
        np.testing.assert_allclose(omega, jac[3:, j], atol=1e-6)
    assert np.allclose(kin.forward(q)[0], pos0)  # scratch state does not leak between calls


def test_inverse_reaches_reachable_goals(kin: ArmKinematics) -> None:
    for q_goal in _poses(4, seed=2):
        goal_pos, goal_rot = kin.forward(q_goal)
        result = kin.inverse(goal_pos, goal_rot, REST_QPOS, max_iters=200)
        pos, rot = kin.forward(result.qpos)
        assert np.linalg.norm(pos - goal_pos) < 1e-3
        assert np.linalg.norm(rotation_error(goal_rot, rot)) < 1e-2


def test_inverse_home_pose_points_down(kin: ArmKinematics) -> None:
    result = kin.inverse(HOME_EE_POS, HOME_EE_ROT, REST_QPOS, max_iters=200)
    assert result.pos_error < 1e-3
    assert np.all(result.qpos >= kin.joint_range[:, 0])
    assert np.all(result.qpos <= kin.joint_range[:, 1])


def test_forward_rejects_wrong_sizes(kin: ArmKinematics) -> None:
    with pytest.raises(ValueError):
        kin.forward(np.zeros(6))
