"""DSRL: SAC over a flow policy's noise space, and FRS prefill / BC for DSRL + FRS."""

from __future__ import annotations

import numpy as np
import torch

from frs_steering.learning.noise_data import NoiseDataset
from frs_steering.learning.noise_policy import NoisePolicy, NoisePolicyConfig
from frs_steering.learning.noise_sac import DsrlAgent, ReplayBuffer, SacConfig, frs_transitions

FEATURES, HORIZON, DIM = 5, 4, 3


def _agent(seed: int = 0, bc_weight: float = 0.0, **config) -> DsrlAgent:
    actor = NoisePolicy(NoisePolicyConfig({"state": FEATURES}, HORIZON, DIM, hidden=32), seed=seed)
    sac = SacConfig(hidden=32, batch_size=16, bc_weight=bc_weight, **config)
    return DsrlAgent(actor, sac, seed=seed)


def _buffer(seed: int = 0, size: int = 64) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(FEATURES, DIM, capacity=size)
    for i in range(size):
        buffer.add(
            rng.standard_normal(FEATURES),
            np.clip(rng.standard_normal(DIM), -5, 5),
            float(i % 7 == 0),
            rng.standard_normal(FEATURES),
            i % 7 == 0,
        )
    return buffer


def _weights(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_one_update_changes_actor_and_critic_and_is_finite():
    agent = _agent()
    actor_before, critic_before = _weights(agent.actor), _weights(agent.critic)
    target_before = _weights(agent.target_critic)
    metrics = agent.update(_buffer().sample(16, torch.Generator().manual_seed(0)))
    assert all(np.isfinite(v) for v in metrics.values())
    assert not torch.equal(_weights(agent.actor), actor_before)
    assert not torch.equal(_weights(agent.critic), critic_before)
    assert not torch.equal(_weights(agent.target_critic), target_before)  # Polyak step


def test_seeded_updates_reproduce():
    runs = []
    for _ in range(2):
        agent, buffer = _agent(seed=4), _buffer(seed=4)
        for _ in range(3):
            agent.update(buffer.sample(16, agent.generator))
        runs.append(_weights(agent.actor))
    assert torch.equal(runs[0], runs[1])
    other = _agent(seed=5)
    assert not torch.equal(_weights(other.actor), runs[0])


def test_actions_stay_inside_the_bound():
    agent = _agent()
    for scale in (1.0, 1e4):
        features = (scale * np.random.default_rng(0).standard_normal(FEATURES)).astype(np.float32)
        for deterministic in (True, False):
            action = agent.act(features, deterministic=deterministic)
            assert action.shape == (DIM,) and np.all(np.abs(action) <= agent.bound)


def test_bc_term_pulls_the_actor_toward_frs_noises():
    agent = _agent(bc_weight=10.0)
    rng = np.random.default_rng(1)
    features = rng.standard_normal((32, FEATURES)).astype(np.float32)
    targets = np.tile(np.array([[2.0, -1.0, 0.5]], np.float32), (32, 1))
    agent.set_bc_data(features, targets)
    buffer = _buffer()

    def gap() -> float:
        with torch.no_grad():
            actions = [agent.act(f, deterministic=True) for f in features]
        return float(np.abs(np.stack(actions) - targets).mean())

    before = gap()
    for _ in range(150):
        agent.update(buffer.sample(16, agent.generator))
    assert gap() < 0.5 * before


def test_self_imitation_grows_the_bc_set_and_pulls_toward_its_own_successes():
    """Plain DSRL starts without BC data; each added success extends the set the term uses."""
    agent = _agent(bc_weight=10.0)
    rng = np.random.default_rng(2)
    assert agent.bc_size() == 0
    first = rng.standard_normal((16, FEATURES)).astype(np.float32)
    second = rng.standard_normal((16, FEATURES)).astype(np.float32)
    target = np.array([[-2.0, 1.0, 1.5]], np.float32)
    agent.add_bc_data(first, np.tile(target, (16, 1)))
    agent.add_bc_data(second, np.tile(target, (16, 1)))
    agent.add_bc_data(second[:0], np.zeros((0, DIM), np.float32))  # an empty add changes nothing
    assert agent.bc_size() == 32
    features = np.concatenate([first, second])
    buffer = _buffer(seed=3)

    def gap() -> float:
        actions = np.stack([agent.act(f, deterministic=True) for f in features])
        return float(np.abs(actions - target).mean())

    before = gap()
    for _ in range(150):
        agent.update(buffer.sample(16, agent.generator))
    assert gap() < 0.5 * before


def test_frs_transitions_reward_success_and_drop_failed_timeouts():
    # episode 0: 3 chunks, success; episode 1: 2 chunks, failure
    n = 5
    noise = torch.arange(n * HORIZON * DIM, dtype=torch.float32).reshape(n, HORIZON, DIM) / 100
    data = NoiseDataset(
        observations={"state": torch.arange(n * FEATURES, dtype=torch.float32).reshape(n, -1)},
        noise=noise,
        steered=torch.ones(n, HORIZON, DIM, dtype=torch.bool),
        episode=torch.tensor([0, 0, 0, 1, 1]),
        success=torch.tensor([True, True, True, False, False]),
    )
    transitions, bc_features, bc_actions = frs_transitions(data, _agent().actor)
    assert len(transitions) == 4  # the failed episode's last chunk has nothing to bootstrap
    rewards = [t[2] for t in transitions]
    dones = [t[4] for t in transitions]
    assert rewards == [0.0, 0.0, 1.0, 0.0] and dones == [False, False, True, False]
    np.testing.assert_array_equal(transitions[0][3], data.observations["state"][1].numpy())
    np.testing.assert_allclose(transitions[1][1], noise[1].mean(0).numpy(), rtol=1e-6)
    assert len(bc_features) == 3 and len(bc_actions) == 3


def test_critic_ensemble_has_independent_members_and_targets_from_random_pairs():
    agent = _agent(critic_ensemble=5)
    batch = _buffer().sample(16, torch.Generator().manual_seed(0))
    q = agent.critic(batch["features"], batch["actions"])
    assert q.shape == (16, 5)
    first, second = agent.critic.nets[0], agent.critic.nets[1]
    assert not torch.equal(_weights(first), _weights(second))  # independently initialized
    pair_mins = {(i, j): q[:, [i, j]].min(1).values for i in range(5) for j in range(i + 1, 5)}
    chosen = set()
    for _ in range(20):
        target = agent._pessimistic(q)
        matches = [pair for pair, value in pair_mins.items() if torch.equal(target, value)]
        assert matches, "the target is the min over one pair of members"
        chosen.add(matches[0])
    assert len(chosen) > 1  # a fresh random pair each time, as in RLPD
    metrics = agent.update(batch)
    assert all(np.isfinite(v) for v in metrics.values())


def test_trust_region_keeps_the_actor_near_its_start_against_a_pull():
    """A BC pull away from the start moves a free actor far; an anchored one stays close, and
    with a radius it moves about that far and no farther."""
    rng = np.random.default_rng(5)
    features = rng.standard_normal((32, FEATURES)).astype(np.float32)
    target = np.tile(np.array([[3.0, -3.0, 3.0]], np.float32), (32, 1))
    drift = {}
    for weight, radius in ((0.0, 0.0), (100.0, 0.0), (100.0, 0.5)):
        agent = _agent(seed=6, bc_weight=1.0, anchor_weight=weight, anchor_radius=radius)
        start = np.stack([agent.act(f, deterministic=True) for f in features])
        anchor_weights = None if agent.anchor is None else _weights(agent.anchor)
        agent.set_bc_data(features, target)
        buffer = _buffer(seed=6)
        for _ in range(300):
            agent.update(buffer.sample(16, agent.generator))
        end = np.stack([agent.act(f, deterministic=True) for f in features])
        drift[weight, radius] = float(np.abs(end - start).max(1).mean())
        if anchor_weights is not None:
            assert torch.equal(_weights(agent.anchor), anchor_weights)  # the centre never moves
    assert drift[100.0, 0.0] < 0.1 * drift[0.0, 0.0]
    assert 0.3 < drift[100.0, 0.5] < 0.7


def test_without_the_critics_gradient_only_the_bc_term_moves_the_actor():
    """``actor_from_critic=False`` (pretraining, filtered self-imitation): no BC data, no step."""
    agent = _agent(bc_weight=10.0)
    buffer = _buffer()
    actor_before, critic_before = _weights(agent.actor), _weights(agent.critic)
    agent.update(buffer.sample(16, agent.generator), actor_from_critic=False)
    assert torch.equal(_weights(agent.actor), actor_before)
    assert not torch.equal(_weights(agent.critic), critic_before)
    rng = np.random.default_rng(7)
    agent.set_bc_data(rng.standard_normal((8, FEATURES)), rng.standard_normal((8, DIM)))
    agent.update(buffer.sample(16, agent.generator), actor_from_critic=False)
    assert not torch.equal(_weights(agent.actor), actor_before)
