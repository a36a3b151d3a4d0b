"""The learned reversal: a noise policy that reads the commanded reference and predicts the noise
FRS's reversal finds, so FRS runs without the K reverse velocity calls."""

from __future__ import annotations

import pytest
import torch

from frs_steering.checkpoint import CheckpointError
from frs_steering.learning.noise_data import NoiseDataset
from frs_steering.learning.noise_policy import (
    DsbcConfig,
    NoisePolicy,
    NoisePolicyConfig,
    default_config,
    load_checked_noise_policy,
    reversal_dataset,
    save_noise_policy,
    train_dsbc,
)
from frs_steering.learning.observation_input import (
    POLICY_EMBEDDING,
    REFERENCE_REVERSAL,
    REFERENCE_ROW,
    derived_inputs,
    reference_reversal,
    reference_row,
)
from frs_steering.model import FlowMatchingPolicy, FlowPolicyConfig
from frs_steering.policy import ActionSpec
from frs_steering.steer import available_methods, steer

HORIZON, REAL, STATE = 4, 3, 6


def _policy() -> FlowMatchingPolicy:
    spec = ActionSpec(horizon=HORIZON, dim=REAL + 1, real_dims=tuple(range(REAL)), num_steps=5)
    config = FlowPolicyConfig(spec, state_dim=STATE, width=16, depth=1)
    return FlowMatchingPolicy(config, seed=0)


def _requests(n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Observations and row-constant references (as a coarse proposal makes), the last real
    dim commanded in about half of them."""
    g = torch.Generator().manual_seed(seed)
    obs = {"state": torch.randn(n, STATE, generator=g)}
    row = torch.rand(n, 1, REAL + 1, generator=g) * 2 - 1
    row[..., REAL] = 0.0  # padding
    references = row.expand(n, HORIZON, REAL + 1).clone()
    commanded = torch.zeros(n, HORIZON, REAL + 1, dtype=torch.bool)
    commanded[..., : REAL - 1] = True
    commanded[..., REAL - 1] = (torch.rand(n, generator=g) < 0.5).view(n, 1)
    return obs, references, commanded


def _steer(policy, obs, references, commanded, method: str, params=None):
    return steer(
        policy,
        references,
        observation=obs,
        mask=commanded,
        method=method,
        params=params,
        reference_normalized=True,
        generator=torch.Generator().manual_seed(7),
        include_base_sample=method == "frs",
    )


def _train_reversal(one_step_reversal: bool) -> tuple[FlowMatchingPolicy, NoisePolicy]:
    """A learned reversal fit to FRS's noises on 1024 requests (reading the one-step reversal
    or not; everything else the same)."""
    policy = _policy()
    obs, references, commanded = _requests(1024, seed=0)
    frs = _steer(policy, obs, references, commanded, "frs")
    rollouts = NoiseDataset(
        observations=obs,
        noise=frs.noise,
        steered=commanded,
        episode=torch.arange(1024) // 8,
        success=torch.ones(1024, dtype=torch.bool),
    )
    data = reversal_dataset(
        rollouts, policy, references, commanded, one_step_reversal=one_step_reversal, batch_size=300
    )
    expected = {"state", POLICY_EMBEDDING, REFERENCE_ROW}
    assert set(data.observation_dims) == expected | (
        {REFERENCE_REVERSAL} if one_step_reversal else set()
    )
    config = default_config(data, target="full", hidden=128)
    training = DsbcConfig(steps=1500, batch_size=128, steered_only=True, max_seconds=120)
    net, _ = train_dsbc(data, config, training, progress=False)
    return policy, net


@pytest.fixture(scope="module")
def trained() -> tuple[FlowMatchingPolicy, NoisePolicy]:
    return _train_reversal(one_step_reversal=False)


@pytest.fixture(scope="module")
def trained_one_step() -> tuple[FlowMatchingPolicy, NoisePolicy]:
    return _train_reversal(one_step_reversal=True)


def test_learned_reversal_steers_where_frs_steers(trained):
    assert "learned_reversal" in available_methods()
    policy, net = trained
    obs, references, commanded = _requests(256, seed=1)  # requests it never saw
    frs = _steer(policy, obs, references, commanded, "frs")
    learned = _steer(policy, obs, references, commanded, "learned_reversal", {"reversal": net})
    real = commanded & policy.spec.steerable_mask("cpu")
    # the same fresh draw where nothing is commanded, the prediction where something is
    assert torch.equal(learned.noise[~real], frs.noise[~real])
    noise_error = (learned.noise - frs.noise)[real].pow(2).mean()
    assert noise_error < 0.25 * frs.noise[real].pow(2).mean()  # against predicting the prior mean
    chunk_error = (learned.chunk - frs.chunk)[real].pow(2).mean()
    base_error = (frs.base_chunk - frs.chunk)[real].pow(2).mean()
    assert chunk_error < 0.25 * base_error
    assert torch.isfinite(learned.chunk).all()


def test_learned_reversal_output_is_bounded_whatever_the_reference(trained):
    policy, net = trained
    obs, references, commanded = _requests(16, seed=2)
    hostile = references * 1e6  # finite, far outside anything it was trained on
    result = _steer(policy, obs, hostile, commanded, "learned_reversal", {"reversal": net})
    assert torch.isfinite(result.noise).all() and torch.isfinite(result.chunk).all()
    assert result.noise[commanded].abs().max() <= net.config.bound


def test_methods_refuse_a_network_that_reads_the_wrong_inputs(trained):
    policy, net = trained
    obs, references, commanded = _requests(2, seed=3)
    plain = NoisePolicy(NoisePolicyConfig({"state": STATE}, HORIZON, REAL + 1, target="full"))
    with pytest.raises(ValueError, match="reads the reference row"):
        _steer(policy, obs, references, commanded, "learned_reversal", {"reversal": plain})
    with pytest.raises(ValueError, match="reads the commanded reference"):
        _steer(policy, obs, references, commanded, "noise_policy", {"noise_policy": net})
    with pytest.raises(ValueError, match="reads the commanded reference"):
        derived_inputs(net.config.observation_dims, policy, obs)


def test_derived_inputs_are_checked_against_the_flow_policy_at_load(trained, tmp_path):
    policy, net = trained
    save_noise_policy(net, tmp_path / "reversal")
    assert load_checked_noise_policy(tmp_path / "reversal", policy).config == net.config
    for dims in (
        {"state": STATE, POLICY_EMBEDDING: 17, REFERENCE_ROW: 2 * (REAL + 1)},  # wrong width
        {"state": STATE, REFERENCE_ROW: 2 * REAL},
        {"state": STATE, "camera": 5},  # not observed, not derived
        {POLICY_EMBEDDING: 16},  # no state
    ):
        other = NoisePolicy(NoisePolicyConfig(dims, HORIZON, REAL + 1))
        save_noise_policy(other, tmp_path / "other")
        with pytest.raises(CheckpointError, match="derived inputs"):
            load_checked_noise_policy(tmp_path / "other", policy)


def test_reference_row_is_the_first_row_and_its_mask():
    references = torch.tensor([[[0.5, -0.2, 0.9], [0.1, 0.1, 0.1]]])
    commanded = torch.tensor([[[True, False, True], [False, False, False]]])
    row = reference_row(references, commanded)
    assert torch.equal(row, torch.tensor([[0.5, -0.2, 0.9, 1.0, 0.0, 1.0]]))


def test_observation_embedding_is_what_the_flow_is_conditioned_on():
    policy = _policy()
    obs = {"state": torch.randn(5, STATE)}
    embedding = policy.observation_embedding(obs)
    assert embedding.shape == (5, policy.config.width)
    cache = policy.encode(obs)
    assert not torch.allclose(embedding[0], embedding[1])  # it carries the observation
    film = policy.observation_film(embedding).view_as(cache.film) + policy.film_offset
    assert torch.allclose(cache.film, film)
    bias = policy.observation_token_bias(embedding).unsqueeze(1)
    assert torch.allclose(cache.token_bias, bias)
    with pytest.raises(ValueError, match="NaN or Inf"):
        policy.observation_embedding({"state": torch.full((1, STATE), float("nan"))})


def test_the_one_step_reversal_is_frs_reversal_with_one_step():
    policy = _policy()
    obs, references, commanded = _requests(8, seed=4)
    commanded[:] = True  # FRS reverses the whole chunk; the input does too
    one_step = steer(
        policy,
        references,
        observation=obs,
        mask=commanded,
        num_steps=1,
        reference_normalized=True,
        include_base_sample=False,
    )
    derived = reference_reversal(policy, policy.encode(obs), references)
    assert derived.shape == (8, HORIZON * (REAL + 1))
    padding = policy.spec.steerable_mask("cpu").expand_as(references)
    assert torch.allclose(derived.view_as(references)[padding], one_step.noise[padding], atol=1e-6)


def test_reading_the_one_step_reversal_lands_closer_to_frs(trained, trained_one_step):
    obs, references, commanded = _requests(256, seed=1)  # requests neither saw
    policy, plain = trained
    _, reader = trained_one_step
    frs = _steer(policy, obs, references, commanded, "frs")
    real = commanded & policy.spec.steerable_mask("cpu")
    errors = {}
    for name, net in (("plain", plain), ("reader", reader)):
        result = _steer(policy, obs, references, commanded, "learned_reversal", {"reversal": net})
        errors[name] = (result.noise - frs.noise)[real].pow(2).mean()
        assert torch.equal(result.noise[~real], frs.noise[~real])
        calls = result.diagnostics.nfe
        assert calls == policy.spec.num_steps + (name == "reader")  # its one velocity call
    assert errors["reader"] < 0.8 * errors["plain"]  # 0.52-0.67 over training seeds


def test_a_one_step_reader_is_loaded_checked_and_bounded(trained_one_step, tmp_path):
    policy, net = trained_one_step
    save_noise_policy(net, tmp_path / "reversal")
    loaded = load_checked_noise_policy(tmp_path / "reversal", policy)
    obs, references, commanded = _requests(16, seed=2)
    for scale in (1e6, 1e20, 1e30):  # from 1e20 on the flow's own step is no longer finite
        hostile = references * scale
        result = _steer(policy, obs, hostile, commanded, "learned_reversal", {"reversal": loaded})
        assert torch.isfinite(result.noise).all() and torch.isfinite(result.chunk).all()
        assert result.noise[commanded].abs().max() <= net.config.bound
    with pytest.raises(ValueError, match="reads the commanded reference"):
        derived_inputs({"state": STATE, REFERENCE_REVERSAL: HORIZON * (REAL + 1)}, policy, obs)
    wrong = {"state": STATE, REFERENCE_ROW: 2 * (REAL + 1), REFERENCE_REVERSAL: HORIZON}
    save_noise_policy(NoisePolicy(NoisePolicyConfig(wrong, HORIZON, REAL + 1)), tmp_path / "w")
    with pytest.raises(CheckpointError, match="derived inputs"):
        load_checked_noise_policy(tmp_path / "w", policy)


def test_a_reference_the_flow_cannot_reverse_finitely_is_refused_not_returned():
    """FRS reverses the reference itself: from about 1e20 the flow's steps overflow, and steer
    says so instead of returning actions nothing may act on."""
    policy = _policy()
    obs, references, commanded = _requests(4, seed=5)
    assert torch.isfinite(_steer(policy, obs, references * 1e6, commanded, "frs").chunk).all()
    with pytest.raises(ValueError, match="non-finite actions"):
        _steer(policy, obs, references * 1e20, commanded, "frs")
