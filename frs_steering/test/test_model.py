"""Built-in flow policy: contract, input checks, training, checkpoints."""

import dataclasses
import json

import pytest
import torch

from frs_steering.checkpoint import (
    CheckpointError,
    load_policy,
    read_config,
    save_policy,
    write_manifest,
)
from frs_steering.model import FlowMatchingPolicy, FlowPolicyConfig, fit_discriminant_projection
from frs_steering.normalization import fit_normalizer
from frs_steering.policy import ActionSpec, FlowPolicy, TimeConvention
from frs_steering.steer import generate_from_noise, steer
from frs_steering.train import sample_flow_times, train_flow_policy

HORIZON, REAL_DIMS, PADDED = 4, 3, 5


def _dataset(count: int = 256, seed: int = 0):
    """Chunks that ramp from the state's first three entries, with a bimodal sign flip."""
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(count, 6, generator=g)
    sign = torch.where(torch.rand(count, generator=g) < 0.5, -1.0, 1.0)
    ramp = torch.linspace(0.25, 1.0, HORIZON)
    actions = sign[:, None, None] * ramp[None, :, None] * state[:, None, :REAL_DIMS]
    actions = 10.0 * actions + 0.05 * torch.randn(count, HORIZON, REAL_DIMS, generator=g)
    instruction = torch.randn(count, 8, generator=g)
    return {"state": state, "instruction": instruction}, actions


def _config(convention=TimeConvention.NOISE_AT_ONE, actions=None) -> FlowPolicyConfig:
    normalizer = fit_normalizer(_dataset()[1] if actions is None else actions, "quantile")
    spec = ActionSpec(
        horizon=HORIZON,
        dim=PADDED,
        real_dims=(0, 1, 2),
        convention=convention,
        num_steps=8,
        normalizer=normalizer,
    )
    return FlowPolicyConfig(action_spec=spec, state_dim=6, instruction_dim=8, width=32, depth=2)


def _trained(convention=TimeConvention.NOISE_AT_ONE, steps: int = 30):
    observations, actions = _dataset()
    policy = FlowMatchingPolicy(_config(convention, actions), seed=3)
    history = train_flow_policy(
        policy, observations, actions, steps=steps, batch_size=32, seed=4, progress=False
    )
    return policy, history


def _five_steps(**options) -> list[float]:
    """The loss history of ``_trained(steps=5)`` with extra training options."""
    policy = FlowMatchingPolicy(_config(actions=_dataset()[1]), seed=3)
    return train_flow_policy(
        policy, *_dataset(), steps=5, batch_size=32, seed=4, progress=False, **options
    )


def test_policy_implements_the_protocol_and_shapes():
    policy = FlowMatchingPolicy(_config())
    assert isinstance(policy, FlowPolicy)
    observations, _ = _dataset(3)
    cache = policy.encode(observations)
    x = torch.randn(3, HORIZON, PADDED)
    v = policy.velocity(x, torch.rand(3), cache)
    assert v.shape == x.shape
    repeated = policy.repeat_cache(cache, 2)
    assert repeated.film.shape[0] == 6
    torch.testing.assert_close(repeated.film[4], cache.film[2])


def _frs_chunk(policy, observations) -> torch.Tensor:  # noqa: ANN001
    reference = torch.linspace(-1.0, 1.0, HORIZON * REAL_DIMS).view(HORIZON, REAL_DIMS)
    generator = torch.Generator().manual_seed(7)
    first = {key: value[:1] for key, value in observations.items()}
    return steer(policy, reference, observation=first, method="frs", generator=generator).chunk


def test_compiled_velocity_is_bit_identical_shares_parameters_and_leaves_training_eager():
    policy, _ = _trained(steps=5)
    policy.eval()
    observations, _ = _dataset(3)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, HORIZON, PADDED, generator=g), torch.rand(3, generator=g)
    with torch.no_grad():
        cache = policy.encode(observations)
        eager = policy.velocity(x, t, cache)
        single = policy.velocity(
            x[:1], t[:1], policy.encode({k: v[:1] for k, v in observations.items()})
        )
    frs_before = _frs_chunk(policy, observations)
    assert policy.compile_velocity() is policy
    with torch.inference_mode():  # as steer() calls it
        compiled = policy.velocity(x, t, cache)
        compiled_single = policy.velocity(
            x[:1], t[:1], policy.encode({k: v[:1] for k, v in observations.items()})
        )
    assert torch.equal(compiled, eager) and torch.equal(compiled_single, single)
    assert torch.equal(_frs_chunk(policy, observations), frs_before)
    # The graph reads the module's own parameters: an in-place update shows in both paths.
    with torch.no_grad():
        policy.action_out.bias.add_(0.25)
        updated = policy.velocity(x, t, cache)
    assert not torch.equal(updated, eager)
    torch.testing.assert_close(updated, policy._velocity(x, t, cache.film, cache.token_bias))
    # Training calls take the eager path, so gradients flow.
    policy.train()
    policy.velocity(x, t, policy.encode(observations)).square().mean().backward()
    assert policy.action_in.weight.grad is not None
    with pytest.raises(ValueError, match="x must be"):  # the shape checks still run first
        policy.velocity(x[:, :1], t, cache)
    assert "_velocity_graph" not in "".join(policy.state_dict())


def test_missing_instruction_means_zero_embedding():
    policy = FlowMatchingPolicy(_config())
    state = torch.randn(2, 6)
    without = policy.encode({"state": state})
    with_zero = policy.encode({"state": state, "instruction": torch.zeros(2, 8)})
    assert torch.equal(without.film, with_zero.film)


@pytest.mark.parametrize(
    ("observation", "message"),
    [
        ({}, "needs a 'state'"),
        ({"state": torch.zeros(2, 5)}, r"observation\['state'\] must be \[B, 6\]"),
        ({"state": torch.zeros(6)}, "must be a"),
        ({"state": torch.full((2, 6), float("nan"))}, "NaN or Inf"),
        ({"state": torch.zeros(2, 6), "image": torch.zeros(2, 6)}, "unknown observation keys"),
        ({"state": torch.zeros(2, 6), "instruction": torch.zeros(3, 8)}, "batch size"),
    ],
)
def test_bad_observations_raise(observation, message):
    with pytest.raises(ValueError, match=message):
        FlowMatchingPolicy(_config()).encode(observation)


def test_bad_velocity_inputs_raise():
    policy = FlowMatchingPolicy(_config())
    cache = policy.encode({"state": torch.zeros(2, 6)})
    with pytest.raises(ValueError, match="x must be"):
        policy.velocity(torch.zeros(2, HORIZON, 3), torch.zeros(2), cache)
    with pytest.raises(ValueError, match="batch mismatch"):
        policy.velocity(torch.zeros(3, HORIZON, PADDED), torch.zeros(3), cache)


@pytest.mark.parametrize("convention", list(TimeConvention))
def test_training_lowers_the_flow_matching_loss(convention):
    policy, history = _trained(convention, steps=150)
    assert len(history) == 150
    first, last = sum(history[:15]) / 15, sum(history[-15:]) / 15
    assert last < 0.6 * first, (first, last)


def test_training_is_deterministic():
    a, history_a = _trained()
    b, history_b = _trained()
    assert history_a == history_b
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_training_rejects_bad_data():
    observations, actions = _dataset(8)
    policy = FlowMatchingPolicy(_config())
    bad = actions.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        train_flow_policy(policy, observations, bad, steps=1, progress=False)
    with pytest.raises(ValueError, match="rows like actions"):
        train_flow_policy(policy, {"state": torch.zeros(7, 6)}, actions, steps=1, progress=False)


def test_checkpoint_round_trip_is_bitwise(tmp_path):
    policy, _ = _trained()
    save_policy(policy, tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")
    assert loaded.config == policy.config
    assert read_config(tmp_path / "ckpt") == policy.config
    assert loaded.spec.convention is TimeConvention.NOISE_AT_ONE
    observations, actions = _dataset(4, seed=1)
    results = [
        steer(
            p,
            actions,
            observation=observations,
            generator=torch.Generator().manual_seed(0),
            round_trip=True,
        )
        for p in (policy, loaded)
    ]
    assert torch.equal(results[0].chunk, results[1].chunk)
    assert torch.equal(results[0].noise, results[1].noise)
    assert torch.equal(results[0].chunk_real, results[1].chunk_real)


def test_noise_at_zero_convention_survives_checkpoints(tmp_path):
    policy = FlowMatchingPolicy(_config(TimeConvention.NOISE_AT_ZERO))
    loaded = load_policy(save_policy(policy, tmp_path / "c"))
    assert loaded.spec.convention is TimeConvention.NOISE_AT_ZERO
    assert loaded.spec.normalizer == policy.spec.normalizer


def _saved(tmp_path):
    directory = tmp_path / "ckpt"
    save_policy(FlowMatchingPolicy(_config()), directory)
    return directory


def test_corrupt_weights_are_detected(tmp_path):
    directory = _saved(tmp_path)
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_policy(directory)


def test_removing_the_weights_hash_does_not_bypass_the_check(tmp_path):
    """Deleting ``weights_sha256`` from config.json used to make corrupt weights load; now
    config.json itself is covered by the manifest."""
    directory = _saved(tmp_path)
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    document = json.loads((directory / "config.json").read_text())
    del document["weights_sha256"]
    (directory / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="config.json is corrupt"):
        load_policy(directory)


def _edit_config(directory, edit, *, resign: bool = True) -> None:
    path = directory / "config.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))
    if resign:  # a consistent checkpoint with a bad config, not a corrupt one
        write_manifest(directory)


def test_edited_config_is_refused_unless_resigned(tmp_path):
    """A normalizer statistic edited in config.json (x100) is corruption: refused, naming
    the file."""
    directory = _saved(tmp_path)

    def scale_q99(document):
        normalizer = document["config"]["action_spec"]["normalizer"]
        normalizer["q99"] = [100 * v for v in normalizer["q99"]]

    _edit_config(directory, scale_q99, resign=False)
    with pytest.raises(CheckpointError, match=r"config.json is corrupt"):
        load_policy(directory)
    with pytest.raises(CheckpointError, match=r"config.json is corrupt"):
        read_config(directory)


def test_missing_or_unparsable_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "nowhere")
    directory = _saved(tmp_path)
    (directory / "config.json").write_text("{not json")
    write_manifest(directory)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_policy(directory)
    directory = _saved(tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_policy(directory)
    directory = _saved(tmp_path)
    (directory / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no manifest.json.*checkpoint sign"):
        load_policy(directory)


def _concat_config() -> FlowPolicyConfig:
    base = _config()
    return FlowPolicyConfig(
        action_spec=base.action_spec,
        state_dim=6,
        instruction_dim=8,
        width=32,
        depth=2,
        encoder_depth=2,
        encoder_width=48,
        input_normalization=True,
    )


def test_concat_encoder_with_input_statistics_trains_and_round_trips(tmp_path):
    observations, actions = _dataset()
    observations = {
        "state": 0.01 * observations["state"] + 0.4,
        **{"instruction": observations["instruction"]},
    }
    policy = FlowMatchingPolicy(_concat_config(), seed=3)
    assert not hasattr(policy, "state_encoder")
    policy.set_input_statistics(observations)
    torch.testing.assert_close(policy.state_shift, observations["state"].mean(0))
    standardized = (observations["state"] - policy.state_shift) * policy.state_scale
    torch.testing.assert_close(standardized.std(0, unbiased=False), torch.ones(6))
    history = train_flow_policy(
        policy, observations, actions, steps=30, batch_size=32, seed=4, progress=False
    )
    assert sum(history[-5:]) < sum(history[:5])
    loaded = load_policy(save_policy(policy, tmp_path / "c"))
    assert loaded.config == policy.config
    torch.testing.assert_close(loaded.state_scale, policy.state_scale)
    a, b = policy.encode(observations), loaded.encode(observations)
    assert torch.equal(a.film, b.film)
    without = policy.encode({"state": observations["state"][:2]})
    with_zero = policy.encode(
        {"state": observations["state"][:2], "instruction": torch.zeros(2, 8)}
    )
    assert torch.equal(without.film, with_zero.film)


def test_input_statistics_need_the_flag_and_bad_encoder_sizes_raise():
    with pytest.raises(ValueError, match="input_normalization"):
        FlowMatchingPolicy(_config()).set_input_statistics(_dataset()[0])
    with pytest.raises(ValueError, match="encoder_depth"):
        FlowPolicyConfig(action_spec=_config().action_spec, state_dim=6, encoder_depth=-1)


def test_shrinkage_keeps_a_direction_training_never_varied_along_from_being_amplified():
    """Whitening by the within-task scatter blows up an axis the training texts (almost) never
    move along, the axis an unseen phrasing may move along; shrinking the scatter toward its
    mean eigenvalue keeps the map's response there small next to the tasks' separation."""
    g = torch.Generator().manual_seed(1)
    labels = [k for k in range(3) for _ in range(40)]
    centres = torch.zeros(3, 8)
    centres[:, :2] = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    spread = torch.tensor([0.3, 0.3, 1.0, 1.0, 1.0, 1.0, 1.0, 1e-3])  # axis 7: never varied
    features = centres[labels] + torch.randn(120, 8, generator=g) * spread

    def response_to_the_unseen_axis(shrinkage: float) -> float:
        projection = fit_discriminant_projection(features, labels, shrinkage=shrinkage)
        task_step = ((centres[1] - centres[0]) @ projection).norm()
        return float((torch.eye(8)[7] @ projection).norm() / task_step)

    hard, gentle = response_to_the_unseen_axis(0.0), response_to_the_unseen_axis(1.0)
    assert hard > 10 * gentle and gentle < 0.1


def test_discriminant_projection_keeps_tasks_apart_and_paraphrases_together(tmp_path):
    """Three 'tasks' that differ along two axes, 'paraphrases' spread 50x wider along others:
    the fitted map separates the tasks by far more than their spread, unlike the raw inputs,
    and the policy applies it after standardizing, also after a checkpoint round trip."""
    g = torch.Generator().manual_seed(0)
    labels = [k for k in range(3) for _ in range(40)]
    centres = torch.zeros(3, 8)
    centres[:, :2] = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    noise = torch.randn(120, 8, generator=g) * torch.tensor([0.1] * 2 + [5.0] * 6)
    features = centres[labels] + noise
    projection = fit_discriminant_projection(features, labels, shrinkage=0.0)
    assert projection.shape == (8, 2)
    projected = features @ projection
    torch.testing.assert_close(projected.std(0, unbiased=False), torch.ones(2))

    def separation(x: torch.Tensor) -> float:
        index = torch.tensor(labels)
        means = torch.stack([x[index == k].mean(0) for k in range(3)])
        spread = (x - means[index]).norm(dim=1).mean()
        return float(torch.cdist(means, means).max() / spread)

    assert separation(projected) > 5.0 > 0.5 > separation(features)
    with pytest.raises(ValueError, match="two classes"):
        fit_discriminant_projection(features, [0] * 120)

    config = dataclasses.replace(_concat_config(), instruction_projection_dim=2)
    policy = FlowMatchingPolicy(config, seed=3)
    observations = {"state": torch.randn(120, 6, generator=g), "instruction": features}
    policy.set_input_statistics(observations)
    standardized = (features - policy.instruction_shift) * policy.instruction_scale
    policy.set_instruction_projection(fit_discriminant_projection(standardized, labels))
    loaded = load_policy(save_policy(policy, tmp_path / "p"))
    torch.testing.assert_close(loaded.instruction_projection, policy.instruction_projection)
    assert torch.equal(policy.encode(observations).film, loaded.encode(observations).film)
    moved = {**observations, "instruction": features + 3.0 * torch.eye(8)[2]}  # a paraphrase axis
    shifted = {**observations, "instruction": features + 3.0 * torch.eye(8)[0]}  # the task axis
    base = policy.encode(observations).token_bias  # FiLM starts at zero; the token bias does not
    assert (policy.encode(moved).token_bias - base).abs().mean() < (
        policy.encode(shifted).token_bias - base
    ).abs().mean()
    with pytest.raises(ValueError, match="finite"):
        policy.set_instruction_projection(torch.full((8, 2), float("nan")))
    with pytest.raises(ValueError, match="instruction_projection_dim"):
        dataclasses.replace(_config(), instruction_projection_dim=2)  # no standardized encoder


def _two_task_data(count: int = 512):
    """Two instructions, each with its own sign of the chunk; the state says nothing."""
    g = torch.Generator().manual_seed(11)
    task = torch.rand(count, generator=g) < 0.5
    instruction = torch.zeros(count, 8)
    instruction[task, 0] = 1.0
    instruction[~task, 1] = 1.0
    sign = torch.where(task, 1.0, -1.0)
    actions = sign[:, None, None] * torch.ones(count, HORIZON, REAL_DIMS)
    actions = actions + 0.05 * torch.randn(count, HORIZON, REAL_DIMS, generator=g)
    return {"state": torch.zeros(count, 6), "instruction": instruction}, actions


def test_instruction_dropout_teaches_an_instruction_free_mode():
    """With instruction dropout the policy keeps each instruction's task and, given no
    instruction (the zero vector), samples both tasks; the checks on the share are loose."""
    observations, actions = _two_task_data()
    policy = FlowMatchingPolicy(_config(actions=actions), seed=3)
    train_flow_policy(
        policy,
        observations,
        actions,
        steps=400,
        batch_size=64,
        seed=4,
        instruction_dropout=0.3,
        progress=False,
    )
    count = 200
    noise = torch.randn(count, HORIZON, PADDED, generator=torch.Generator().manual_seed(5))
    state = torch.zeros(count, 6)

    def mean_sign(instruction: torch.Tensor | None) -> torch.Tensor:
        observation = {"state": state}
        if instruction is not None:
            observation["instruction"] = instruction.expand(count, 8)
        chunk = policy.spec.from_policy(generate_from_noise(policy, noise, observation=observation))
        return torch.sign(chunk.mean(dim=(1, 2)))

    first, second = torch.eye(8)[:1], torch.eye(8)[1:2]
    assert (mean_sign(first) > 0).float().mean() > 0.9
    assert (mean_sign(second) < 0).float().mean() > 0.9
    withheld = (mean_sign(None) > 0).float().mean()
    assert 0.15 < withheld < 0.85, withheld


def _assert_instruction_option_checked(option: str, bad_values, valid: float) -> None:
    """``option`` refuses ``bad_values``, needs an ``instruction`` in the observations, and at 0
    trains exactly as without it."""
    observations, actions = _dataset(64)
    policy = FlowMatchingPolicy(_config(), seed=3)
    for bad in bad_values:
        with pytest.raises(ValueError, match=option):
            train_flow_policy(
                policy, observations, actions, steps=1, progress=False, **{option: bad}
            )
    with pytest.raises(ValueError, match="instruction"):
        train_flow_policy(
            policy,
            {"state": observations["state"]},
            actions,
            steps=1,
            progress=False,
            **{option: valid},
        )
    assert _five_steps(**{option: 0.0}) == _trained(steps=5)[1]


def test_instruction_dropout_is_checked_and_off_by_default():
    _assert_instruction_option_checked("instruction_dropout", (-0.1, 1.0, float("nan")), 0.2)


def test_instruction_noise_is_checked_seeded_and_still_learns_each_instruction():
    """Noise on the instruction changes training (it is drawn), repeats with the seed, is off
    by default, and a policy trained with it still reads its two instructions apart."""
    _assert_instruction_option_checked("instruction_noise", (-0.1, float("nan"), float("inf")), 0.1)
    noisy = _five_steps(instruction_noise=0.3)
    assert noisy != _trained(steps=5)[1] and noisy == _five_steps(instruction_noise=0.3)

    observations, actions = _two_task_data()
    policy = FlowMatchingPolicy(_config(actions=actions), seed=3)
    train_flow_policy(
        policy, observations, actions, steps=400, batch_size=64, seed=4,
        instruction_noise=0.3, progress=False,
    )  # fmt: skip
    count = 200
    noise = torch.randn(count, HORIZON, PADDED, generator=torch.Generator().manual_seed(5))
    for index, sign in ((0, 1.0), (1, -1.0)):
        observation = {
            "state": torch.zeros(count, 6),
            "instruction": torch.eye(8)[index].expand(count, 8),
        }
        chunk = policy.spec.from_policy(generate_from_noise(policy, noise, observation=observation))
        assert (torch.sign(chunk.mean(dim=(1, 2))) == sign).float().mean() > 0.9


def test_instruction_noise_share_noises_only_that_share_of_each_batch():
    """A share of 1 is the plain noise (no extra draw, earlier runs repeat); a share below 1
    trains otherwise, repeats with the seed, and is refused outside (0, 1]."""
    noisy = _five_steps(instruction_noise=0.3)
    assert _five_steps(instruction_noise=0.3, instruction_noise_share=1.0) == noisy
    half = _five_steps(instruction_noise=0.3, instruction_noise_share=0.5)
    assert half not in (noisy, _trained(steps=5)[1])
    assert half == _five_steps(instruction_noise=0.3, instruction_noise_share=0.5)
    observations, actions = _dataset(64)
    policy = FlowMatchingPolicy(_config(), seed=3)
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="instruction_noise_share"):
            train_flow_policy(
                policy, observations, actions, steps=1, progress=False,
                instruction_noise=0.3, instruction_noise_share=bad,
            )  # fmt: skip


@pytest.mark.parametrize("convention", list(TimeConvention))
def test_beta_time_sampling_weights_the_noisy_end(convention):
    """pi0's training times: the noise share is Beta(1.5, 1) on [0.001, 1] in either time
    convention (mean 0.6, P(share < 0.5) = 0.5 ** 1.5); uniform times stay uniform."""
    generator = torch.Generator().manual_seed(0)
    times = sample_flow_times(200_000, convention, "beta", generator)
    share = convention.noise_level(times)
    assert 0.001 <= share.min() and share.max() <= 1.0
    assert abs(share.mean().item() - (0.6 * 0.999 + 0.001)) < 0.003
    assert abs((share < 0.5).float().mean().item() - 0.5**1.5) < 0.003
    uniform = sample_flow_times(200_000, convention, "uniform", torch.Generator().manual_seed(0))
    assert abs(uniform.mean().item() - 0.5) < 0.003
    assert abs((uniform < 0.25).float().mean().item() - 0.25) < 0.003
    with pytest.raises(ValueError, match="time_sampling must be one of"):
        sample_flow_times(4, convention, "logit_normal")


def test_time_sampling_is_checked_and_uniform_by_default():
    observations, actions = _dataset(64)
    policy = FlowMatchingPolicy(_config(), seed=3)
    with pytest.raises(ValueError, match="time_sampling"):
        train_flow_policy(policy, observations, actions, steps=1, time_sampling="lognormal")
    default = _trained(steps=5)[1]
    assert _five_steps(time_sampling="uniform") == default
    assert _five_steps(time_sampling="beta") != default
