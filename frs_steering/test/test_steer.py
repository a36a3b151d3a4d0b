"""The steering entry point: encode-once, method contracts, masks, registry, input checks."""

import math

import pytest
import torch

from frs_steering.analytic import GaussianMixturePolicy, example_mixture
from frs_steering.integrate import action_to_noise, noise_to_action
from frs_steering.normalization import MeanStdNormalizer
from frs_steering.policy import ActionSpec, FlowPolicy, TimeConvention
from frs_steering.steer import (
    MethodOutput,
    available_methods,
    generate_from_noise,
    get_method,
    register_method,
    steer,
    unregister_method,
)

BUILTIN_METHODS = ["frs", "partial_noising", "sample_rank", "direct", "base"]


class CountingPolicy:
    """Wraps a policy, counting encode and velocity calls; padded spec with a normalizer."""

    def __init__(self, inner: GaussianMixturePolicy, spec: ActionSpec | None = None) -> None:
        self.inner = inner
        self.spec = spec or inner.spec
        self.encode_calls = 0
        self.velocity_calls = 0

    def encode(self, observation):
        self.encode_calls += 1
        return {"token": torch.zeros(observation["state"].shape[0], 1)}

    def repeat_cache(self, cache, repeats):
        return {"token": cache["token"].repeat_interleave(repeats, 0)}

    def velocity(self, x, t, cache):
        assert cache["token"].shape[0] == x.shape[0], "cache not repeated to the batch"
        self.velocity_calls += 1
        return self.inner.velocity(x, t)


def _policy(num_steps: int = 10) -> CountingPolicy:
    return CountingPolicy(example_mixture(num_steps=num_steps))


def _obs(batch: int = 2) -> dict[str, torch.Tensor]:
    return {"state": torch.zeros(batch, 3)}


def _refs(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 5, 2, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_counting_policy_satisfies_protocol():
    assert isinstance(_policy(), FlowPolicy)


@pytest.mark.parametrize("method", BUILTIN_METHODS)
@pytest.mark.parametrize("include_base_sample", [True, False])
def test_observation_encoded_once_and_nfe_counted(method, include_base_sample):
    policy = _policy()
    result = steer(
        policy,
        _refs(),
        observation=_obs(),
        method=method,
        generator=_gen(),
        include_base_sample=include_base_sample,
        round_trip=True,
    )
    needs_policy = include_base_sample or method != "direct"
    assert policy.encode_calls == (1 if needs_policy else 0)
    assert result.diagnostics.encode_calls == policy.encode_calls
    assert result.diagnostics.nfe == policy.velocity_calls
    assert (result.base_chunk is not None) == include_base_sample


def test_given_cache_skips_encoding_and_matches_observation_path():
    policy = _policy()
    cache = policy.encode(_obs())
    from_cache = steer(policy, _refs(), cache=cache, generator=_gen())
    from_obs = steer(policy, _refs(), observation=_obs(), generator=_gen())
    assert policy.encode_calls == 2  # one explicit, one by the observation call
    assert from_cache.diagnostics.encode_calls == 0
    assert torch.equal(from_cache.chunk, from_obs.chunk)


@pytest.mark.parametrize(
    ("method", "params", "nfe"),
    [
        ("frs", {}, 20),
        ("base", {}, 10),
        ("direct", {}, 10),
        ("sample_rank", {"num_samples": 5}, 10),
        ("partial_noising", {"noise_level": 0.35}, 4 + 10),
    ],
)
def test_velocity_call_budget(method, params, nfe):
    policy = _policy()
    result = steer(policy, _refs(), observation=_obs(), method=method, params=params)
    assert result.diagnostics.nfe == nfe == policy.velocity_calls


@pytest.mark.parametrize("method", BUILTIN_METHODS)
def test_seeded_calls_repeat_exactly(method):
    first = steer(_policy(), _refs(), observation=_obs(), method=method, generator=_gen(5))
    second = steer(_policy(), _refs(), observation=_obs(), method=method, generator=_gen(5))
    other = steer(_policy(), _refs(), observation=_obs(), method=method, generator=_gen(6))
    assert torch.equal(first.chunk, second.chunk)
    assert torch.equal(first.base_chunk, second.base_chunk)
    assert not torch.equal(first.base_chunk, other.base_chunk)


def test_frs_is_reverse_then_forward_of_the_reference():
    policy = _policy()
    refs = _refs()
    result = steer(policy, refs, observation=_obs(), generator=_gen())
    convention = policy.spec.convention
    noise = action_to_noise(policy.inner.velocity, refs, convention, 10)
    chunk = noise_to_action(policy.inner.velocity, noise, convention, 10)
    torch.testing.assert_close(result.noise, noise, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.chunk, chunk, rtol=0, atol=1e-6)


def test_frs_uses_fresh_noise_on_unsteered_elements_shared_with_the_base_sample():
    policy = _policy()
    mask = torch.zeros(5, 2, dtype=torch.bool)
    mask[:2] = True
    results = [
        steer(policy, _refs(seed=s), observation=_obs(), mask=mask, generator=_gen(3))
        for s in (0, 1)
    ]
    steered = results[0].steered
    assert torch.equal(steered, mask.expand(2, 5, 2))
    # Unsteered noise does not depend on the reference; steered noise does.
    assert torch.equal(results[0].noise[~steered], results[1].noise[~steered])
    assert not torch.allclose(results[0].noise[steered], results[1].noise[steered])
    base_noise = steer(policy, _refs(), observation=_obs(), method="base", generator=_gen(3))
    assert torch.equal(results[0].noise[~steered], base_noise.noise[~steered])
    assert torch.equal(results[0].base_chunk, base_noise.chunk)


def test_temperature_scales_the_base_sample_noise():
    policy = _policy()
    plain = steer(policy, _refs(), observation=_obs(), method="base", generator=_gen(3))
    cooled = steer(
        policy, _refs(), observation=_obs(), method="base", generator=_gen(3), temperature=0.5
    )
    torch.testing.assert_close(cooled.noise, 0.5 * plain.noise)
    regenerated = generate_from_noise(policy, cooled.noise, observation=_obs())
    torch.testing.assert_close(cooled.chunk, regenerated, rtol=0, atol=1e-6)
    assert not torch.allclose(cooled.chunk, plain.chunk)
    for bad in (-0.1, float("nan"), 2.5, True):
        with pytest.raises(ValueError, match="temperature"):
            steer(policy, _refs(), observation=_obs(), method="base", temperature=bad)


def test_temperature_scales_frs_fresh_noise_but_not_the_inverted_noise():
    policy = _policy()
    mask = torch.zeros(5, 2, dtype=torch.bool)
    mask[:2] = True
    plain = steer(policy, _refs(), observation=_obs(), mask=mask, generator=_gen(3))
    cooled = steer(
        policy, _refs(), observation=_obs(), mask=mask, generator=_gen(3), temperature=0.25
    )
    steered = plain.steered
    assert torch.equal(cooled.noise[steered], plain.noise[steered])
    torch.testing.assert_close(cooled.noise[~steered], 0.25 * plain.noise[~steered])
    torch.testing.assert_close(
        cooled.base_chunk,
        generate_from_noise(
            policy, 0.25 * torch.randn(2, 5, 2, generator=_gen(3)), observation=_obs()
        ),
        rtol=0,
        atol=1e-6,
    )


def test_frs_extra_noise_scale_moves_only_steered_noise():
    policy = _policy()
    mask = torch.zeros(5, 2, dtype=torch.bool)
    mask[0] = True
    plain = steer(policy, _refs(), observation=_obs(), mask=mask, generator=_gen())
    noisy = steer(
        policy,
        _refs(),
        observation=_obs(),
        mask=mask,
        generator=_gen(),
        params={"noise_scale": 0.5},
    )
    fresh = plain.noise[~plain.steered]
    assert torch.equal(noisy.noise[~noisy.steered], fresh)
    delta = (noisy.noise - plain.noise)[plain.steered]
    fresh_steered = torch.randn(2, 5, 2, generator=_gen())[plain.steered]
    torch.testing.assert_close(delta, 0.5 * fresh_steered)


def test_a_residual_policy_moves_only_steered_noise_by_its_offsets():
    """FRS's reversed noise plus the residual policy's offsets where steered, fresh noise
    elsewhere; the chunk is generated from exactly that noise."""
    policy = _policy()
    mask = torch.zeros(5, 2, dtype=torch.bool)
    mask[:, 0] = True
    offsets = torch.linspace(-1.0, 1.0, 20).reshape(2, 5, 2)
    seen = []

    def residual(observation):
        seen.append(observation)
        return offsets

    plain = steer(policy, _refs(), observation=_obs(), mask=mask, generator=_gen())
    moved = steer(
        policy,
        _refs(),
        observation=_obs(),
        mask=mask,
        generator=_gen(),
        params={"residual_policy": residual},
    )
    assert len(seen) == 1 and torch.equal(seen[0]["state"], _obs()["state"])
    assert torch.equal(moved.noise[~moved.steered], plain.noise[~plain.steered])
    torch.testing.assert_close(moved.noise - plain.noise, torch.where(mask, offsets, 0.0))
    again = generate_from_noise(policy, moved.noise, observation=_obs())
    torch.testing.assert_close(moved.chunk, again)
    assert "residual_policy" in moved.diagnostics.timings


@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        (torch.zeros(2, 5, 3), r"offsets of shape \(2, 5, 2\), got \(2, 5, 3\)"),
        (torch.full((2, 5, 2), math.nan), "non-finite offsets"),
        ([[0.0]], "got list"),
    ],
)
def test_a_bad_residual_policy_output_is_refused(offsets, message):
    with pytest.raises(ValueError, match=message):
        steer(
            _policy(),
            _refs(),
            observation=_obs(),
            generator=_gen(),
            params={"residual_policy": lambda _: offsets},
        )


def test_a_residual_policy_needs_the_observation():
    policy = _policy()
    cache = policy.encode(_obs())
    with pytest.raises(ValueError, match="needs the observation"):
        steer(policy, _refs(), cache=cache, params={"residual_policy": lambda _: 0})


def test_partial_noising_limits():
    policy = _policy()
    full = steer(
        policy,
        _refs(),
        observation=_obs(),
        method="partial_noising",
        params={"noise_level": 1.0},
        generator=_gen(),
    )
    torch.testing.assert_close(full.chunk, full.base_chunk, rtol=0, atol=1e-6)
    data = policy.inner.sample_data(2, _gen(9))
    slight = steer(
        policy,
        data,
        observation=_obs(),
        method="partial_noising",
        params={"noise_level": 0.05},
        generator=_gen(),
    )
    assert slight.diagnostics.extras["denoise_steps"] == 1
    assert slight.diagnostics.reference_distance.max() < 0.1


def test_sample_rank_keeps_the_most_similar_sample():
    policy = _policy()
    refs = _refs(4)
    result = steer(
        policy,
        refs,
        observation=_obs(4),
        method="sample_rank",
        params={"num_samples": 16},
        generator=_gen(),
    )
    noises = torch.randn(4, 16, 5, 2, generator=_gen())
    samples = noise_to_action(
        policy.inner.velocity, noises.reshape(64, 5, 2), policy.spec.convention, 10
    ).reshape(4, 16, 10)
    cosine = torch.nn.functional.cosine_similarity(samples, refs.reshape(4, 1, 10), dim=2)
    torch.testing.assert_close(
        result.chunk.reshape(4, 10), samples[torch.arange(4), cosine.argmax(1)]
    )
    torch.testing.assert_close(result.diagnostics.extras["cosine"], cosine.max(1).values)
    torch.testing.assert_close(result.base_chunk.reshape(4, 10), samples[:, 0])
    one = steer(policy, refs, observation=_obs(4), method="sample_rank", params={"num_samples": 1})
    torch.testing.assert_close(one.chunk, one.base_chunk)


def _padded_policy() -> CountingPolicy:
    """Policy space 5x3 whose last dim is padding; real units are (x - 1) / 2 normalized."""
    means = torch.randn(3, 5, 3, generator=_gen(21))
    means[..., 2] = 0.0
    spec = ActionSpec(
        horizon=5,
        dim=3,
        real_dims=(0, 1),
        normalizer=MeanStdNormalizer(mean=(1.0, 1.0), std=(2.0, 2.0)),
    )
    return CountingPolicy(GaussianMixturePolicy(means, 0.2), spec)


def test_real_unit_and_normalized_references_agree_and_padding_is_never_steered():
    policy = _padded_policy()
    real = _refs() * 2 + 1
    normalized = policy.spec.to_policy(real)
    assert torch.equal(normalized[..., 2], torch.zeros(2, 5))
    a = steer(policy, real, observation=_obs(), generator=_gen())
    b = steer(policy, normalized, observation=_obs(), reference_normalized=True, generator=_gen())
    assert torch.equal(a.chunk, b.chunk)
    assert not a.steered[..., 2].any() and a.steered[..., :2].all()
    torch.testing.assert_close(a.chunk_real, policy.spec.from_policy(a.chunk))
    assert a.chunk_real.shape == (2, 5, 2)
    direct = steer(policy, real, observation=_obs(), method="direct")
    torch.testing.assert_close(direct.chunk_real, real)
    # A normalized reference with junk in the padding is cleaned to the normalized zero.
    junk = normalized.clone()
    junk[..., 2] = 7.0
    c = steer(policy, junk, observation=_obs(), reference_normalized=True, generator=_gen())
    assert torch.equal(c.chunk, b.chunk)


def test_mask_in_real_layout_expands_to_padded_layout():
    policy = _padded_policy()
    mask = torch.tensor([[True, False]] * 5)
    result = steer(policy, _refs(), observation=_obs(), mask=mask)
    expected = torch.tensor([[True, False, False]] * 5).expand(2, 5, 3)
    assert torch.equal(result.steered, expected)


def test_unbatched_reference_gets_a_batch_axis():
    result = steer(_policy(), _refs()[0], observation=_obs(1))
    assert result.chunk.shape == (1, 5, 2)


def test_diagnostics_are_consistent():
    policy = _policy()
    refs = _refs()
    result = steer(policy, refs, observation=_obs(), generator=_gen(), round_trip=True)
    diag = result.diagnostics
    d = 10
    noise = result.noise.flatten(1)
    torch.testing.assert_close(diag.noise_rms, noise.norm(dim=1) / math.sqrt(d))
    log_density = torch.distributions.Normal(0.0, 1.0).log_prob(noise).sum(1)
    torch.testing.assert_close(diag.noise_log_density, log_density)
    rms = (result.chunk - refs).flatten(1).pow(2).mean(1).sqrt()
    torch.testing.assert_close(diag.reference_distance, rms)
    recovered = action_to_noise(policy.inner.velocity, result.chunk, policy.spec.convention, 10)
    expected_rt = (recovered - result.noise).flatten(1).pow(2).mean(1).sqrt()
    torch.testing.assert_close(diag.round_trip_error, expected_rt, rtol=1e-4, atol=1e-5)
    assert diag.nfe == 30
    assert set(diag.timings) >= {"encode", "reverse", "forward", "round_trip", "total"}
    assert diag.timings["total"] >= diag.timings["reverse"] + diag.timings["forward"]


def test_registry_accepts_new_methods():
    def echo_noise(ctx, *, scale: float = 1.0) -> MethodOutput:
        noise = scale * ctx.noise()
        return MethodOutput(chunk=ctx.generate(noise), noise=noise)

    register_method("test_echo_noise", echo_noise)
    try:
        assert "test_echo_noise" in available_methods()
        assert get_method("test_echo_noise") is echo_noise
        policy = _policy()
        result = steer(
            policy, _refs(), observation=_obs(), method="test_echo_noise", params={"scale": 0.0}
        )
        assert policy.encode_calls == 1
        assert torch.allclose(result.noise, torch.zeros(2, 5, 2))
        with pytest.raises(ValueError, match="already registered"):
            register_method("test_echo_noise", echo_noise)
    finally:
        unregister_method("test_echo_noise")
    assert "test_echo_noise" not in available_methods()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reference": torch.zeros(2, 4, 2)}, "reference must be"),
        ({"reference": torch.zeros(2, 5, 3)}, "reference must be"),
        ({"reference": torch.zeros(5)}, "reference must be"),
        ({"reference": torch.full((2, 5, 2), float("nan"))}, "NaN or Inf"),
        ({"reference": torch.full((2, 5, 2), float("inf"))}, "NaN or Inf"),
        ({"reference": torch.zeros(2, 5, 2, dtype=torch.long)}, "floating point"),
        ({"mask": torch.ones(5, 3, dtype=torch.bool)}, "mask must be"),
        ({"mask": torch.ones(3, 5, 2, dtype=torch.bool)}, "mask batch"),
        ({"mask": torch.ones(5, 2)}, "bool tensor"),
        ({"method": "nope"}, "unknown steering method"),
        ({"params": {"noise_level": 0.5}}, "bad params"),
        ({"method": "partial_noising", "params": {"noise_level": 0.0}}, "noise_level"),
        ({"method": "partial_noising", "params": {"noise_level": 1.5}}, "noise_level"),
        ({"method": "partial_noising", "params": {"noise_level": float("nan")}}, "noise_level"),
        ({"method": "sample_rank", "params": {"num_samples": 0}}, "num_samples"),
        ({"method": "frs", "params": {"noise_scale": -1.0}}, "noise_scale"),
        ({"num_steps": 0}, "num_steps"),
        ({"solver": "leapfrog"}, "unknown solver"),
        ({"observation": None}, "an observation or a cache"),
    ],
)
def test_bad_input_raises_value_error(kwargs, message):
    arguments = {"reference": _refs(), "observation": _obs()} | kwargs
    policy = arguments.pop("policy", _policy())
    reference = arguments.pop("reference")
    with pytest.raises(ValueError, match=message):
        steer(policy, reference, **arguments)


def test_both_time_conventions_through_steer_with_normalizer():
    """The normalizer round trip is independent of the time convention."""
    outputs = []
    for convention in TimeConvention:
        spec = ActionSpec(
            horizon=5,
            dim=2,
            convention=convention,
            normalizer=MeanStdNormalizer(mean=(0.5, -0.5), std=(3.0, 3.0)),
        )
        inner = example_mixture(convention=convention)
        outputs.append(
            steer(CountingPolicy(inner, spec), _refs(), observation=_obs(), generator=_gen())
        )
    torch.testing.assert_close(outputs[0].chunk_real, outputs[1].chunk_real, rtol=0, atol=1e-4)
