"""The environment's joint-level API (used by the simulated-robot node) tracks joint targets."""

from __future__ import annotations

import numpy as np
import pytest

from frs_sim.env import FrankaTabletopEnv
from frs_sim.scene import OBJECT_NAMES


@pytest.fixture(scope="module")
def env() -> FrankaTabletopEnv:
    environment = FrankaTabletopEnv(tasks="novel", embed_fn=lambda _t: np.zeros(384, np.float32))
    environment.reset(seed=4)
    yield environment
    environment.close()


def test_advance_requires_reset() -> None:
    fresh = FrankaTabletopEnv(tasks="novel", embed_fn=lambda _t: np.zeros(384, np.float32))
    with pytest.raises(RuntimeError):
        fresh.advance(0.1)


def test_joint_targets_are_tracked_in_real_time_units(env: FrankaTabletopEnv) -> None:
    q0, _ = env.arm_joint_state()
    target = q0 + np.array([0.1, -0.05, 0.0, 0.05, 0.0, 0.0, 0.1])
    t0 = env.sim_time
    env.set_joint_targets(target, gripper=1.0)
    assert env.advance(0.5) == 250
    assert env.sim_time == pytest.approx(t0 + 0.5)
    q, qd = env.arm_joint_state()
    np.testing.assert_allclose(q, target, atol=5e-3)
    assert np.all(np.abs(qd) < 0.1)
    fingers, _ = env.finger_joint_state()
    assert np.all(fingers < 0.01)  # closed
    held, gripper = env.joint_targets()
    np.testing.assert_allclose(held, target)
    assert gripper == 1.0


def test_joint_targets_are_clipped_and_validated(env: FrankaTabletopEnv) -> None:
    env.set_joint_targets(np.full(7, 100.0), 0.0)
    held, _ = env.joint_targets()
    assert np.all(held <= env.idx.arm_range[:, 1])
    with pytest.raises(ValueError):
        env.set_joint_targets(np.full(7, np.nan), 0.0)
    env.reset(seed=4)


def test_object_poses_match_object_positions(env: FrankaTabletopEnv) -> None:
    positions, quats = env.object_poses_in_base()
    for i, name in enumerate(OBJECT_NAMES):
        np.testing.assert_allclose(positions[i], env.object_positions()[name])
    np.testing.assert_allclose(np.linalg.norm(quats, axis=1), 1.0)
    assert not env.object_dropped()
