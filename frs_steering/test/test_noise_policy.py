"""DSBC noise policies: training, bounds, reproducibility, checkpoints, the steering method."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from frs_steering.checkpoint import CheckpointError
from frs_steering.learning.noise_data import NoiseDataset
from frs_steering.learning.noise_policy import (
    DsbcConfig,
    NoisePolicy,
    NoisePolicyConfig,
    load_noise_policy,
    save_noise_policy,
    train_dsbc,
)
from frs_steering.learning.observation_input import train_within_budget
from frs_steering.model import FlowMatchingPolicy, FlowPolicyConfig
from frs_steering.policy import ActionSpec
from frs_steering.steer import available_methods, generate_from_noise, steer

HORIZON, DIM = 4, 3


def _dataset(n: int = 256, seed: int = 0) -> NoiseDataset:
    """Noises that depend smoothly on the state (a learnable map), some beyond the bound."""
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(n, 6, generator=g)
    weights = torch.randn(6, HORIZON * DIM, generator=g)
    noise = (state @ weights).reshape(n, HORIZON, DIM)
    return NoiseDataset(
        observations={"state": state},
        noise=noise,
        steered=torch.ones(n, HORIZON, DIM, dtype=torch.bool),
        episode=torch.arange(n) // 8,
        success=torch.ones(n, dtype=torch.bool),
    )


@pytest.mark.parametrize("target", ["chunk_mean", "full"])
@pytest.mark.parametrize("objective", ["mse", "nll"])
def test_dsbc_lowers_its_loss_and_respects_the_bound(target, objective):
    data = _dataset()
    config = NoisePolicyConfig({"state": 6}, HORIZON, DIM, target=target, hidden=64, bound=2.0)
    net, history = train_dsbc(
        data, config, DsbcConfig(objective=objective, steps=300, batch_size=64), progress=False
    )
    loss = history["loss"]
    assert history["steps"] == 300 and history["cpu_seconds"] > 0
    assert sum(loss[-30:]) / 30 < 0.5 * sum(loss[:30]) / 30
    with torch.no_grad():
        extreme = net({"state": 1e4 * torch.randn(64, 6)})
    assert extreme.shape == (64, HORIZON, DIM)
    assert extreme.abs().max() <= 2.0 and torch.isfinite(extreme).all()
    if target == "chunk_mean":  # one vector shared by every row
        assert torch.equal(extreme[:, 0], extreme[:, -1])


def test_mixture_keeps_one_of_two_modes_where_a_regression_averages_them(tmp_path):
    """The same states with noises of either sign (as steering to either of two mats needs):
    MSE returns their mean, ~0, which steers nowhere; the mixture returns one of the modes."""
    n = 256
    g = torch.Generator().manual_seed(3)
    state = torch.randn(n, 6, generator=g)
    sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).view(n, 1, 1)
    data = NoiseDataset(
        observations={"state": state},
        noise=2.0 * sign * torch.ones(n, HORIZON, DIM),
        steered=torch.ones(n, HORIZON, DIM, dtype=torch.bool),
        episode=torch.arange(n) // 8,
        success=torch.ones(n, dtype=torch.bool),
    )
    outputs = {}
    for components, objective in ((1, "mse"), (4, "mixture")):
        config = NoisePolicyConfig(
            {"state": 6}, HORIZON, DIM, target="full", hidden=64, components=components
        )
        budget = DsbcConfig(objective=objective, steps=400, batch_size=64)
        net, _ = train_dsbc(data, config, budget, progress=False)
        with torch.no_grad():
            outputs[objective] = net({"state": state[:32]})
        save_noise_policy(net, tmp_path / objective)
        reloaded = load_noise_policy(tmp_path / objective)
        assert reloaded.config.components == components
        with torch.no_grad():
            assert torch.equal(reloaded({"state": state[:32]}), outputs[objective])
    assert outputs["mse"].abs().mean() < 0.5
    assert outputs["mixture"].abs().mean() > 1.5  # a mode's magnitude, not their mean
    assert outputs["mixture"].abs().max() <= 5.0


def test_mixture_objective_and_components_go_together():
    data = _dataset()
    with pytest.raises(ValueError, match="go together"):
        train_dsbc(
            data,
            NoisePolicyConfig({"state": 6}, HORIZON, DIM, components=3),
            DsbcConfig(objective="mse", steps=2),
            progress=False,
        )
    with pytest.raises(ValueError, match="go together"):
        train_dsbc(
            data,
            NoisePolicyConfig({"state": 6}, HORIZON, DIM),
            DsbcConfig(objective="mixture", steps=2),
            progress=False,
        )
    with pytest.raises(ValueError, match="components"):
        NoisePolicyConfig({"state": 6}, HORIZON, DIM, components=0)


def test_seeded_training_reproduces_and_seeds_differ():
    data = _dataset()
    config = NoisePolicyConfig({"state": 6}, HORIZON, DIM, hidden=32)
    runs = [
        train_dsbc(data, config, DsbcConfig(steps=50, seed=s), progress=False) for s in (0, 0, 1)
    ]
    weights = [torch.cat([p.flatten() for p in net.parameters()]) for net, _ in runs]
    assert torch.equal(weights[0], weights[1])
    assert runs[0][1]["loss"] == runs[1][1]["loss"]
    assert not torch.equal(weights[0], weights[2])


def test_cpu_budget_stops_training_early():
    net, history = train_dsbc(
        _dataset(), None, DsbcConfig(steps=100_000, max_seconds=0.3), progress=False
    )
    assert 0 < history["steps"] < 100_000


@pytest.mark.parametrize("steps", [100_000, 50])
def test_the_schedule_anneals_by_whichever_ends_training(steps):
    """A training the CPU budget ends still ends annealed (its cosine follows the budget's
    share spent, not the steps', which would stop it near the full learning rate); one the
    steps end follows the step schedule exactly."""
    budget = DsbcConfig(steps=steps, learning_rate=1e-2, max_seconds=0.5 if steps > 50 else 60)
    _, history = train_dsbc(_dataset(), None, budget, progress=False)
    rates = history["learning_rate"]
    assert len(rates) == history["steps"] and rates[0] == pytest.approx(1e-2)
    assert all(later <= earlier for earlier, later in zip(rates[:-1], rates[1:], strict=True))
    if steps > 50:
        assert history["steps"] < steps / 2 and history["budget_paced_from"] is not None
        assert rates[-1] < 0.02 * 1e-2
    else:
        assert history["steps"] == 50 and history["budget_paced_from"] is None
        cosine = [0.5e-2 * (1 + math.cos(math.pi * step / 50)) for step in range(50)]
        assert rates == pytest.approx(cosine, rel=1e-6)


def _subnormals_flushed() -> bool:
    return bool((torch.tensor(1e-40) * 2.0) == 0.0)


@pytest.mark.parametrize("flush", [True, False])
def test_training_flushes_subnormals_and_restores_the_default(flush):
    """Subnormal Adam moments cost several times the step on x86: training flushes them to
    zero (unless a budget keeps them, to measure the difference), and leaves the thread's
    default (keep them) behind."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals")
    seen = []

    def loss_of(index):
        seen.append(_subnormals_flushed())
        return (weight * weight).sum()

    weight = nn.Parameter(torch.ones(3))
    net = nn.Module()
    net.weight = weight
    assert not _subnormals_flushed()
    budget = DsbcConfig(steps=3, flush_subnormals=flush)
    train_within_budget(net, loss_of, 8, budget, desc="flush", progress=False)
    assert seen == [flush] * 3
    assert not _subnormals_flushed()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"learning_rate": float("nan")}, "learning_rate must be positive"),
        ({"learning_rate": -1e-3}, "learning_rate must be positive"),
        ({"max_seconds": float("nan")}, "max_seconds must be >= 0"),
        ({"max_seconds": -1.0}, "max_seconds must be >= 0"),
    ],
)
def test_impossible_budgets_are_refused(option, message):
    """A NaN learning rate or CPU budget would train to garbage or never stop: refused."""
    with pytest.raises(ValueError, match=message):
        DsbcConfig(**option)


def test_checkpoint_round_trip_and_corruption(tmp_path):
    net = NoisePolicy(NoisePolicyConfig({"state": 6, "instruction": 4}, HORIZON, DIM), seed=3)
    net.set_input_statistics({"state": torch.randn(20, 6), "instruction": torch.randn(20, 4)})
    path = save_noise_policy(net, tmp_path / "np")
    loaded = load_noise_policy(path)
    obs = {"state": torch.randn(5, 6), "instruction": torch.randn(5, 4)}
    with torch.no_grad():
        assert torch.equal(loaded(obs), net(obs))
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_noise_policy(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_noise_policy(tmp_path / "missing")


def test_bad_observations_are_named():
    net = NoisePolicy(NoisePolicyConfig({"state": 6}, HORIZON, DIM))
    with pytest.raises(ValueError, match="lacks 'state'"):
        net({"image": torch.zeros(1, 6)})
    with pytest.raises(ValueError, match="width 5"):
        net({"state": torch.zeros(1, 5)})


def _flow_policy() -> FlowMatchingPolicy:
    spec = ActionSpec(horizon=HORIZON, dim=DIM + 1, real_dims=tuple(range(DIM)), num_steps=5)
    return FlowMatchingPolicy(FlowPolicyConfig(spec, state_dim=6, width=16, depth=1), seed=0)


def test_noise_policy_method_generates_from_the_predicted_noise():
    assert "noise_policy" in available_methods()
    policy = _flow_policy()
    net = NoisePolicy(NoisePolicyConfig({"state": 6}, HORIZON, DIM + 1, target="full"), seed=1)
    obs = {"state": torch.randn(3, 6)}
    result = steer(
        policy,
        torch.zeros(3, HORIZON, DIM + 1),
        observation=obs,
        method="noise_policy",
        params={"noise_policy": net},
        reference_normalized=True,
        generator=torch.Generator().manual_seed(0),
        include_base_sample=False,
    )
    with torch.no_grad():
        predicted = net(obs)
    real = policy.spec.steerable_mask("cpu").expand_as(predicted)
    assert torch.equal(result.noise[real], predicted[real])  # padding takes fresh noise
    again = generate_from_noise(policy, result.noise, observation=obs)
    assert torch.allclose(result.chunk, again, atol=1e-6)


def test_noise_policy_method_refuses_what_it_cannot_use():
    policy = _flow_policy()
    obs = {"state": torch.randn(1, 6)}
    ref = torch.zeros(HORIZON, DIM + 1)
    with pytest.raises(ValueError, match="must be a NoisePolicy"):
        steer(
            policy,
            ref,
            observation=obs,
            method="noise_policy",
            params={"noise_policy": "path"},
            reference_normalized=True,
        )
    wrong = NoisePolicy(NoisePolicyConfig({"state": 6}, HORIZON + 1, DIM + 1))
    with pytest.raises(ValueError, match="flow policy needs"):
        steer(
            policy,
            ref,
            observation=obs,
            method="noise_policy",
            params={"noise_policy": wrong},
            reference_normalized=True,
        )
    net = NoisePolicy(NoisePolicyConfig({"state": 6}, HORIZON, DIM + 1))
    with torch.inference_mode():
        cache = policy.encode(obs)
    with pytest.raises(ValueError, match="needs the observation"):
        steer(
            policy,
            ref,
            cache=cache,
            method="noise_policy",
            params={"noise_policy": net},
            reference_normalized=True,
        )


def test_defer_head_learns_when_steering_was_skipped_and_then_leaves_noise_fresh():
    data = _dataset(n=512)
    deferred = data.observations["state"][:, 0] > 0  # the "reasoner" defers on one side
    data.steered[deferred] = False
    data.noise[deferred] = torch.randn(int(deferred.sum()), HORIZON, DIM)  # fresh draws
    config = NoisePolicyConfig({"state": 6}, HORIZON, DIM, target="full", defer_head=True)
    net, _ = train_dsbc(data, config, DsbcConfig(steps=400, batch_size=64), progress=False)
    with torch.no_grad():
        logit = net.defer_logit(data.observations)
    assert ((logit > 0) == deferred).float().mean() > 0.9
    spec = ActionSpec(horizon=HORIZON, dim=DIM, num_steps=5)
    policy = FlowMatchingPolicy(FlowPolicyConfig(spec, state_dim=6, width=16, depth=1), seed=0)
    obs = {"state": data.observations["state"][:64]}
    result = steer(
        policy,
        torch.zeros(64, HORIZON, DIM),
        observation=obs,
        method="noise_policy",
        params={"noise_policy": net},
        reference_normalized=True,
        generator=torch.Generator().manual_seed(0),
        include_base_sample=False,
    )
    with torch.no_grad():
        predicted = net(obs)
    took_prediction = (result.noise == predicted).flatten(1).all(1)
    assert torch.equal(took_prediction, logit[:64] <= 0)


def test_features_that_hardly_vary_are_only_centred():
    net = NoisePolicy(NoisePolicyConfig({"state": 3}, HORIZON, DIM))
    flat = torch.stack([torch.randn(50), torch.full((50,), 0.3), 0.001 * torch.randn(50)], dim=1)
    net.set_flat_statistics(flat)
    assert net.input_std[0] == pytest.approx(float(flat[:, 0].std()))
    assert net.input_std[1] == 1.0 and net.input_std[2] == 1.0  # a 5 cm nudge stays 0.05
    assert net.input_mean[1] == pytest.approx(0.3)


@pytest.mark.parametrize(
    "directory",
    [
        "frs_steering/checkpoints/dsbc_novel",  # the shipped DSBC noise policy
        "frs_sim/results/dsrl/push_green_purple/dsrl_frs",  # the DSRL + FRS study's actors
        "frs_sim/results/dsrl/place_blue_white/dsrl_frs",
    ],
)
def test_committed_noise_policies_still_load(directory):
    path = Path(__file__).resolve().parents[2] / directory
    net = load_noise_policy(path)
    assert isinstance(net, NoisePolicy)
