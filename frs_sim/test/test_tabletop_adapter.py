"""The tabletop adapter builds, from ROS messages, the state the environment gives the policy."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import Header

from frs_control.messages import ns_to_stamp
from frs_sim import scene as sc
from frs_sim.env import ACTION_DIM, POSITION_STATE_DIM, STATE_DIM, FrankaTabletopEnv
from frs_sim.ros_messages import object_states
from frs_sim.studies.generalist import GeneralistRecipe, action_limit_bounds, make_policy
from frs_steering.adapters import make_adapter
from frs_steering.normalization import QuantileNormalizer
from frs_steering.observation import InputBuffers, ObservationError

ARM = [f"fr3_joint{i}" for i in range(1, 8)]
FINGERS = ["fr3_finger_joint1", "fr3_finger_joint2"]
STAMP = 5_000_000


def _policy(motion: bool):  # noqa: ANN202
    low, high = action_limit_bounds()
    recipe = GeneralistRecipe(motion_state=motion, width=32, depth=1, encoder_width=32)
    return make_policy(QuantileNormalizer(q01=low, q99=high), recipe)


@pytest.fixture(scope="module")
def moving_env() -> FrankaTabletopEnv:
    """An environment caught mid-motion (3 cm per row along +x, 2 cm along -y)."""
    env = FrankaTabletopEnv(tasks="pretrain", embed_fn=lambda _text: np.zeros(384, np.float32))
    env.reset(seed=11)
    rows = np.zeros((10, ACTION_DIM))
    rows[:, 0], rows[:, 1] = 0.03, -0.02
    env.execute_chunk(rows, n_rows=3)
    yield env
    env.close()


def _messages(env: FrankaTabletopEnv, with_velocity: bool) -> tuple[JointState, object]:
    """joint_states and frs/object_states as the simulated robot publishes them."""
    q, qd = env.arm_joint_state()
    fq, fqd = env.finger_joint_state()
    joints = JointState(name=ARM + FINGERS, position=[*q.tolist(), *fq.tolist()])
    if with_velocity:
        joints.velocity = [*qd.tolist(), *fqd.tolist()]
    joints.header.stamp = ns_to_stamp(STAMP)
    cube_pos, cube_quat = env.object_poses_in_base()
    cubes = dict(zip(sc.OBJECT_NAMES, zip(cube_pos, cube_quat, strict=True), strict=True))
    header = Header(stamp=ns_to_stamp(STAMP), frame_id="fr3_link0")
    return joints, object_states(header, cubes, env.target_positions())


def _adapter_state(policy, env: FrankaTabletopEnv, with_velocity: bool) -> np.ndarray:  # noqa: ANN001
    adapter = make_adapter("tabletop")
    adapter.bind(policy)
    inputs = InputBuffers(adapter, 10)
    joints_msg, objects_msg = _messages(env, with_velocity)
    assert inputs.add_joints(joints_msg)
    for stream in adapter.streams():
        inputs.add(stream.key, objects_msg)
    joints, samples = inputs.match(STAMP, 0)
    observation = adapter.observation(joints, samples, np.zeros((1, 384), np.float32))
    return observation.policy_input["state"][0].numpy()


@pytest.mark.parametrize("motion", [False, True])
def test_the_adapter_state_is_the_environment_state_the_policy_reads(
    moving_env: FrankaTabletopEnv, motion: bool
) -> None:
    expected = moving_env._observation()["state"]  # noqa: SLF001
    state = _adapter_state(_policy(motion), moving_env, with_velocity=True)
    assert state.shape == ((STATE_DIM,) if motion else (POSITION_STATE_DIM,))
    # forward kinematics of the ROS side vs MuJoCo's: millimetres; the velocity: cm/s
    np.testing.assert_allclose(state[:POSITION_STATE_DIM], expected[:POSITION_STATE_DIM], atol=2e-3)
    if motion:
        assert np.linalg.norm(expected[POSITION_STATE_DIM:]) > 0.2  # really moving
        np.testing.assert_allclose(
            state[POSITION_STATE_DIM:], expected[POSITION_STATE_DIM:], atol=0.01
        )


def test_a_motion_policy_without_joint_velocities_gets_no_observation(
    moving_env: FrankaTabletopEnv,
) -> None:
    with pytest.raises(ObservationError, match="no arm velocities"):
        _adapter_state(_policy(True), moving_env, with_velocity=False)
    state = _adapter_state(_policy(False), moving_env, with_velocity=False)
    assert state.shape == (POSITION_STATE_DIM,) and np.all(np.isfinite(state))


def test_bind_refuses_a_state_size_the_tabletop_does_not_have() -> None:
    policy = _policy(False)
    object.__setattr__(policy.config, "state_dim", 47)
    with pytest.raises(ValueError, match="state_dim 47.*46-d .* or 49-d"):
        make_adapter("tabletop").bind(policy)
