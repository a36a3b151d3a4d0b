"""Environment contract: gymnasium checks, seeding, action validation, IK tracking, layout."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from frs_sim.env import (
    ACTION_DIM,
    HOME_EE_ROT,
    POSITION_STATE_DIM,
    STATE_DIM,
    STATE_LAYOUT,
    EnvConfig,
    FrankaTabletopEnv,
    policy_state,
)
from frs_sim.scene import OBJECT_NAMES, TARGET_NAMES
from frs_sim.tasks import find_task


def _stub_embed(text: str) -> np.ndarray:
    """Deterministic stand-in for MiniLM so these tests do not load torch."""
    rng = np.random.default_rng(abs(hash(text)) % 2**32)
    vec = rng.normal(size=384).astype(np.float32)
    return vec / np.linalg.norm(vec)


@pytest.fixture(scope="module")
def env() -> FrankaTabletopEnv:
    environment = FrankaTabletopEnv(tasks="all", embed_fn=_stub_embed)
    yield environment
    environment.close()


def test_check_env_passes() -> None:
    environment = FrankaTabletopEnv(tasks="pretrain", embed_fn=_stub_embed)
    check_env(environment, skip_render_check=True)


def test_reset_is_reproducible(env: FrankaTabletopEnv) -> None:
    obs_a, info_a = env.reset(seed=123)
    obs_b, info_b = env.reset(seed=123)
    assert info_a["task"] == info_b["task"]
    assert obs_a["instruction"] == obs_b["instruction"]
    for key in ("state", "object_pos", "target_pos", "joint_pos", "instruction_embedding"):
        np.testing.assert_array_equal(obs_a[key], obs_b[key])
    obs_c, _ = env.reset(seed=124)
    assert not np.allclose(obs_a["object_pos"], obs_c["object_pos"])


def test_observation_layout(env: FrankaTabletopEnv) -> None:
    obs, _ = env.reset(seed=5)
    state = obs["state"]
    assert state.shape == (STATE_DIM,) and state.dtype == np.float32
    np.testing.assert_allclose(state[STATE_LAYOUT["ee_pos"]], obs["ee_pos"], atol=1e-6)
    np.testing.assert_allclose(
        state[STATE_LAYOUT["object_pos"]], obs["object_pos"].reshape(-1), atol=1e-6
    )
    np.testing.assert_allclose(
        state[STATE_LAYOUT["object_rel"]],
        (obs["object_pos"] - obs["ee_pos"]).reshape(-1),
        atol=1e-5,
    )
    gt = env.object_positions()
    assert list(gt) == list(OBJECT_NAMES)
    assert list(env.target_positions()) == list(TARGET_NAMES)
    np.testing.assert_allclose(gt["red"], obs["object_pos"][0], atol=1e-6)
    pos, quat = env.ee_pose_in_base()
    np.testing.assert_allclose(pos, obs["ee_pos"], atol=1e-6)
    assert quat.shape == (4,) and abs(np.linalg.norm(quat) - 1.0) < 1e-6
    assert obs["gripper"][0] > 0.95  # starts open


@pytest.mark.parametrize(
    "bad",
    [np.zeros(7), np.zeros((2, 8)), np.full(8, np.nan), np.array([0, 0, np.inf, 0, 0, 0, 0, 0])],
)
def test_bad_actions_raise(env: FrankaTabletopEnv, bad: np.ndarray) -> None:
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(bad)


def test_bad_chunks_raise(env: FrankaTabletopEnv) -> None:
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.execute_chunk(np.zeros((10, 7)))
    with pytest.raises(ValueError):
        env.execute_chunk(np.full((10, 8), np.nan))
    with pytest.raises(ValueError):
        env.execute_chunk(np.zeros((10, 8)), n_rows=11)


def test_actions_are_clipped(env: FrankaTabletopEnv) -> None:
    row = env.validate_action(np.array([1.0, 0, 0, 0, 0, 2.0, 3.0, 7.0]))
    np.testing.assert_allclose(row[:3], [0.05, 0, 0])
    np.testing.assert_allclose(row[3:6], [0, 0, 0.25])
    assert row[6] == 1.0 and row[7] == 0.0


def test_ik_solution_is_accurate(env: FrankaTabletopEnv) -> None:
    """Pure kinematics: the DLS solution reaches a pose 5 cm away to within 1 mm."""
    start, _ = env.ik.forward(env.home_qpos)
    goal = start + np.array([0.03, -0.03, -0.03])
    result = env.ik.solve(goal, HOME_EE_ROT, env.home_qpos, max_iters=20)
    reached, rot = env.ik.forward(result.qpos)
    assert np.linalg.norm(reached - goal) < 1e-3
    assert np.allclose(rot, HOME_EE_ROT, atol=1e-2)


@pytest.mark.parametrize("delta", [(0.04, 0.0, 0.0), (0.0, -0.03, -0.03), (-0.02, 0.03, 0.02)])
def test_ee_tracks_commanded_delta(env: FrankaTabletopEnv, delta: tuple[float, ...]) -> None:
    """Closed loop: one commanded row plus two settling steps lands within 5 mm of the goal."""
    obs, _ = env.reset(seed=3)
    start = obs["ee_pos"].astype(float)
    yaw0 = np.arctan2(obs["state"][3], obs["state"][4])
    action = np.zeros(ACTION_DIM)
    action[:3] = delta
    action[5] = 0.1
    env.step(action)
    for _ in range(2):
        obs, *_ = env.step(np.zeros(ACTION_DIM))
    assert np.linalg.norm(obs["ee_pos"] - (start + np.array(delta))) < 5e-3
    yaw1 = np.arctan2(obs["state"][3], obs["state"][4])
    assert abs((yaw1 - yaw0) - 0.1) < 0.02


def test_execute_chunk_runs_rows_and_stops_on_truncation() -> None:
    environment = FrankaTabletopEnv(
        tasks="pretrain", config=EnvConfig(max_episode_steps=4), embed_fn=_stub_embed
    )
    environment.reset(seed=0)
    result = environment.execute_chunk(np.zeros((10, 8)), n_rows=3)
    assert len(result.observations) == 3 and not result.done
    result = environment.execute_chunk(np.zeros((10, 8)))
    assert len(result.rewards) == 1 and result.truncated and result.done


def test_reset_options_select_task(env: FrankaTabletopEnv) -> None:
    task = find_task("push_blue_white")
    obs, info = env.reset(seed=1, options={"task": task, "template_id": 7})
    assert info["task"] == "push_blue_white" and info["template_id"] == 7
    assert obs["instruction"] == task.instruction(7)
    with pytest.raises(ValueError):
        env.reset(seed=1, options={"task": "stack_red_blue"})


def test_layout_keeps_cubes_off_mats(env: FrankaTabletopEnv) -> None:
    for seed in range(30):
        obs, _ = env.reset(seed=seed)
        cubes, mats = obs["object_pos"][:, :2], obs["target_pos"][:, :2]
        cheb = np.abs(cubes[:, None, :] - mats[None, :, :]).max(-1)
        assert cheb.min() >= 0.0999
        assert not env.is_success()


def test_state_ends_with_the_ee_velocity_of_the_executed_motion(env: FrankaTabletopEnv) -> None:
    """At rest the motion features are zero; moving 3 cm per 0.1 s row along +x (and 2 cm along
    -y) reads as ~(0.3, -0.2, 0) m/s, and the positions-only prefix is what policy_state keeps."""
    obs, _ = env.reset(seed=7)
    assert POSITION_STATE_DIM == STATE_LAYOUT["ee_velocity"].start == STATE_DIM - 3
    np.testing.assert_allclose(obs["state"][STATE_LAYOUT["ee_velocity"]], 0.0, atol=1e-6)
    rows = np.zeros((10, ACTION_DIM))
    rows[:, 0], rows[:, 1] = 0.03, -0.02
    rollout = env.execute_chunk(rows, n_rows=4)
    velocity = rollout.last_observation["state"][STATE_LAYOUT["ee_velocity"]]
    np.testing.assert_allclose(velocity, [0.3, -0.2, 0.0], atol=0.06)
    state = rollout.last_observation["state"]
    np.testing.assert_array_equal(policy_state(state, POSITION_STATE_DIM), state[:46])
    assert policy_state(state, STATE_DIM).shape == (49,)
    with pytest.raises(ValueError, match="46-d .* or 49-d"):
        policy_state(state, 47)
    with pytest.raises(ValueError, match="cannot come from 46 floats"):
        policy_state(state[:46], STATE_DIM)  # e.g. demonstrations recorded before the velocity
