"""Normalizers, ActionSpec padding, and the time-convention helpers."""

import pytest
import torch

from frs_steering.normalization import (
    IdentityNormalizer,
    MeanStdNormalizer,
    QuantileNormalizer,
    fit_normalizer,
    normalizer_from_dict,
)
from frs_steering.policy import ActionSpec, TimeConvention, repeat_batch


def test_quantile_normalizer_maps_q01_q99_to_unit_interval_and_back():
    norm = QuantileNormalizer(q01=(-2.0, 0.0), q99=(2.0, 10.0))
    x = torch.tensor([[-2.0, 0.0], [2.0, 10.0], [0.0, 5.0]])
    expected = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(norm.normalize(x), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(norm.unnormalize(norm.normalize(x)), x)


def test_mean_std_round_trip_and_fit():
    data = torch.randn(500, 4, 3, generator=torch.Generator().manual_seed(0)) * 3 + 2
    norm = fit_normalizer(data, "mean_std")
    z = norm.normalize(data)
    torch.testing.assert_close(z.reshape(-1, 3).mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.reshape(-1, 3).std(0), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.unnormalize(z), data, atol=1e-5, rtol=0)
    quantile = fit_normalizer(data, "quantile")
    assert ((quantile.normalize(data).abs() <= 1).double().mean() > 0.97).item()


@pytest.mark.parametrize(
    "normalizer",
    [
        IdentityNormalizer(),
        MeanStdNormalizer(mean=(1.0, 2.0), std=(0.5, 3.0)),
        QuantileNormalizer(q01=(0.0,), q99=(1.0,)),
        MeanStdNormalizer(mean=(1.0,), std=(0.5,), epsilon=1e-8),
        QuantileNormalizer(q01=(0.0,), q99=(1.0,), epsilon=0.0),
    ],
)
def test_normalizer_dict_round_trip(normalizer):
    assert normalizer_from_dict(normalizer.to_dict()) == normalizer


def test_normalizer_epsilon_default_keeps_files_and_zero_spread_is_guarded():
    assert "epsilon" not in MeanStdNormalizer(mean=(0.0,), std=(1.0,)).to_dict()
    x = torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    lerobot_like = QuantileNormalizer(q01=(0.0, 2.0), q99=(2.0, 2.0), epsilon=0.0)
    # LeRobot: 2 * (x - q01) / (q99 - q01) - 1, a zero spread replaced by 1e-8
    expected = torch.tensor([[2 * 0.5 / 2.0 - 1, 2 * 0.0 / 1e-8 - 1]], dtype=torch.float64)
    torch.testing.assert_close(lerobot_like.normalize(x), expected, atol=1e-7, rtol=0)
    z = MeanStdNormalizer(mean=(1.0,), std=(0.001,), epsilon=1e-8).normalize(x[:, :1])
    torch.testing.assert_close(z, (x[:, :1] - 1.0) / (0.001 + 1e-8), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: MeanStdNormalizer(mean=(1.0,), std=(1.0, 2.0)), "dims"),
        (lambda: MeanStdNormalizer(mean=(1.0,), std=(-1.0,)), "non-negative"),
        (lambda: QuantileNormalizer(q01=(1.0,), q99=(0.0,)), "q99 must be >= q01"),
        (lambda: QuantileNormalizer(q01=(float("nan"),), q99=(0.0,)), "finite"),
        (lambda: QuantileNormalizer(q01=(0.0,), q99=(1.0,), epsilon=-1.0), "epsilon"),
        (lambda: normalizer_from_dict({"kind": "log"}), "unknown normalizer kind"),
        (lambda: normalizer_from_dict({"kind": "quantile", "q01": [0]}), "bad fields"),
        (lambda: fit_normalizer(torch.zeros(3, 2), "zscore"), "unknown normalizer kind"),
        (lambda: MeanStdNormalizer(mean=(0.0,), std=(1.0,)).normalize(torch.zeros(2)), "covers"),
    ],
)
def test_normalizer_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_action_spec_pads_and_unpads():
    spec = ActionSpec(
        horizon=2,
        dim=5,
        real_dims=(3, 0),
        normalizer=MeanStdNormalizer(mean=(1.0, -1.0), std=(2.0, 2.0)),
    )
    assert spec.real_dims == (0, 3)
    real = torch.tensor([[[3.0, 1.0], [1.0, -1.0]]])
    padded = spec.to_policy(real)
    assert padded.shape == (1, 2, 5)
    torch.testing.assert_close(padded[0, 0], torch.tensor([1.0, 0, 0, 1.0, 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(spec.from_policy(padded), real)
    assert spec.real_mask().tolist() == [True, False, False, True, False]
    assert ActionSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"horizon": 0, "dim": 2}, "horizon"),
        ({"horizon": 2, "dim": 2, "num_steps": 0}, "num_steps"),
        ({"horizon": 2, "dim": 2, "real_dims": (0, 2)}, "real_dims"),
        ({"horizon": 2, "dim": 2, "real_dims": (1, 1)}, "real_dims"),
        ({"horizon": 2, "dim": 2, "convention": "noise_at_two"}, "noise_at_two"),
        (
            {"horizon": 2, "dim": 3, "normalizer": MeanStdNormalizer(mean=(0.0,), std=(1.0,))},
            "normalizer covers 1",
        ),
    ],
)
def test_action_spec_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ActionSpec(**kwargs)


def test_action_spec_shape_errors():
    spec = ActionSpec(horizon=2, dim=3, real_dims=(0, 1))
    with pytest.raises(ValueError, match="real-unit actions"):
        spec.to_policy(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="policy-space chunk"):
        spec.from_policy(torch.zeros(2, 2))


@pytest.mark.parametrize("convention", list(TimeConvention))
def test_convention_path_endpoints_and_target(convention):
    noise, action = torch.randn(3, 2, 2), torch.randn(3, 2, 2)
    at_noise = convention.interpolate(noise, action, convention.noise_time)
    at_data = convention.interpolate(noise, action, convention.data_time)
    torch.testing.assert_close(at_noise, noise)
    torch.testing.assert_close(at_data, action)
    t = torch.full((3,), 0.3, dtype=torch.float64)
    h = 1e-6
    derivative = (
        convention.interpolate(noise.double(), action.double(), t + h)
        - convention.interpolate(noise.double(), action.double(), t - h)
    ) / (2 * h)
    torch.testing.assert_close(
        derivative, convention.velocity_target(noise, action).double(), atol=1e-6, rtol=0
    )
    assert convention.time_at_noise_level(1.0) == convention.noise_time
    assert convention.time_at_noise_level(0.0) == convention.data_time


def test_repeat_batch_handles_nested_caches():
    cache = {"a": torch.arange(2), "b": (torch.ones(2, 3), [torch.zeros(2)]), "n": 5}
    out = repeat_batch(cache, 3)
    assert out["a"].tolist() == [0, 0, 0, 1, 1, 1]
    assert out["b"][0].shape == (6, 3) and out["b"][1][0].shape == (6,)
    assert out["n"] == 5


def test_repeat_batch_refuses_objects_it_cannot_repeat():
    class KeyValueCache:  # like a transformers DynamicCache: holds tensors, is not a sequence
        def __init__(self) -> None:
            self.keys = [torch.ones(2, 4)]

    with pytest.raises(TypeError, match="KeyValueCache"):
        repeat_batch({"kv": KeyValueCache(), "mask": torch.ones(2)}, 2)
    assert repeat_batch({"n": None, "s": "x", "f": 1.5}, 2) == {"n": None, "s": "x", "f": 1.5}
    cache = KeyValueCache()
    assert repeat_batch(cache, 1) is cache  # one repeat is the identity, whatever the cache
