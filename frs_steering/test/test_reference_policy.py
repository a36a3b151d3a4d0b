"""Reference policies: cloning a reasoner's coarse proposals (training, proposing, checkpoints)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frs_steering.checkpoint import CheckpointError
from frs_steering.learning.noise_data import NoiseDataset
from frs_steering.learning.reference_policy import (
    HEADS,
    ReferenceCloningConfig,
    ReferencePolicy,
    ReferencePolicyConfig,
    decode_proposal,
    encode_proposal,
    load_reference_policy,
    magnitude_levels,
    proposal_accuracy,
    save_reference_policy,
    train_reference_policy,
)
from frs_steering.reasoning import CoarseProposal, Gripper, Source


def teacher(state: np.ndarray) -> CoarseProposal:
    """A reasoner whose proposal is a function of the state: toward the goal in state[3:6]
    from the position in state[0:3], per-axis; defer once there; close when state[6] > 0.8."""
    if state[6] > 0.8:
        return CoarseProposal(source=Source.SCRIPTED, magnitude=0.5, gripper=Gripper.CLOSE)
    offset = state[3:6] - state[0:3]
    signs = np.where(np.abs(offset) > 0.1, np.sign(offset), 0.0)
    if not signs.any():
        return CoarseProposal(source=Source.SCRIPTED, defer=True)
    magnitude = 1.0 if np.abs(offset).max() > 0.5 else 0.5
    return CoarseProposal(
        source=Source.SCRIPTED, direction=signs / np.linalg.norm(signs), magnitude=magnitude
    )


def teacher_dataset(n: int, seed: int) -> NoiseDataset:
    rng = np.random.default_rng(seed)
    state = rng.uniform(-1, 1, size=(n, 7)).astype(np.float32)
    proposals = np.stack([encode_proposal(teacher(s)) for s in state])
    return NoiseDataset(
        observations={"state": torch.from_numpy(state), "instruction": torch.zeros(n, 4)},
        noise=torch.zeros(n, 2, 3),
        steered=torch.zeros(n, 2, 3, dtype=torch.bool),
        episode=torch.arange(n) // 10,
        success=torch.ones(n, dtype=torch.bool),
        proposals=torch.from_numpy(proposals),
    )


@pytest.fixture(scope="module", params=HEADS)
def trained(request):
    torch.set_num_threads(1)
    data = teacher_dataset(4000, seed=0)
    config = ReferenceCloningConfig(steps=800, max_seconds=600.0)  # the cap never binds here
    network = ReferencePolicyConfig({"state": 7, "instruction": 4}, head=request.param)
    net, history = train_reference_policy(data, network, config, progress=False)
    assert net.config.head == request.param
    return net, history


def test_encode_keeps_every_field_of_a_proposal():
    row = encode_proposal(
        CoarseProposal(
            source=Source.VLM,
            direction=np.array([0.0, 0.6, -0.8]),
            magnitude=0.5,
            gripper=Gripper.OPEN,
        )
    )
    np.testing.assert_allclose(row, [0.0, 0.0, 0.6, -0.8, 0.5, 1.0], atol=1e-7)
    deferral = encode_proposal(CoarseProposal(source=Source.HUMAN, defer=True))
    assert deferral[0] == 1.0 and not deferral[1:4].any()


def test_a_reference_policy_learns_the_teachers_proposals_on_unseen_states(trained):
    net, history = trained
    assert history["steps"] == 800 and history["cpu_seconds"] < 600
    assert np.mean(history["loss"][-100:]) < 0.5 * np.mean(history["loss"][:100])
    fresh = teacher_dataset(1000, seed=1)
    agreement = proposal_accuracy(net, fresh)
    assert agreement["defer"] > 0.9 and agreement["gripper"] > 0.95 and agreement["axes"] > 0.7
    # proposals one at a time: the same kind of answer as the teacher, from the learned source
    agree = 0
    for i in range(200):
        observation = {k: v[i : i + 1] for k, v in fresh.observations.items()}
        got = net.propose(observation)
        want = teacher(fresh.observations["state"][i].numpy())
        assert got.source is Source.LEARNED
        assert (
            got.defer
            or got.gripper is not Gripper.KEEP
            or abs(np.linalg.norm(got.direction) - 1) < 1e-6
        )
        agree += got.defer == want.defer and got.gripper is want.gripper
    assert agree > 180


def test_proposals_from_bad_observations_defer_or_refuse(trained):
    net, _ = trained
    observation = {"state": torch.full((1, 7), float("nan")), "instruction": torch.zeros(1, 4)}
    assert net.propose(observation).defer
    observation["state"] = torch.zeros(2, 7)
    with pytest.raises(ValueError, match="batch of one"):
        net.propose({"state": torch.zeros(2, 7), "instruction": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="lacks 'instruction'"):
        net.propose({"state": torch.zeros(1, 7)})
    with pytest.raises(ValueError, match="width 5"):
        net.propose({"state": torch.zeros(1, 5), "instruction": torch.zeros(1, 4)})


def test_training_needs_recorded_proposals():
    data = teacher_dataset(20, seed=0)
    with pytest.raises(ValueError, match="no recorded proposals"):
        train_reference_policy(NoiseDataset(**{**vars(data), "proposals": None}), progress=False)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        ReferenceCloningConfig(steps=0)
    with pytest.raises(ValueError, match="hidden"):
        ReferencePolicyConfig({"state": 7}, hidden=0)
    with pytest.raises(ValueError, match="head must be one of"):
        ReferencePolicyConfig({"state": 7}, head="joint")


def test_checkpoint_round_trip_and_tampering(trained, tmp_path):
    net, _ = trained
    save_reference_policy(net, tmp_path / "ref")
    loaded = load_reference_policy(tmp_path / "ref")
    assert isinstance(loaded, ReferencePolicy) and not loaded.training
    data = teacher_dataset(50, seed=2)
    observations = {k: v.float() for k, v in data.observations.items()}
    with torch.no_grad():
        a, b = net(observations), loaded(observations)
    for field in ("defer", "gripper", "kind", "axes", "magnitude", "magnitude_level"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None and y is None) or torch.equal(x, y), field
    assert loaded.config == net.config
    weights = tmp_path / "ref" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        load_reference_policy(tmp_path / "ref")
    with pytest.raises(CheckpointError):
        load_reference_policy(tmp_path / "missing")


def test_magnitudes_spoken_in_levels_are_classified_among_them(tmp_path):
    """The teacher's motions say 1.0 or 0.5 (a sharp boundary): a clone with the levels the data
    holds proposes exactly those, and more often the teacher's than the regressed magnitude
    lands within 0.05 of it."""
    torch.set_num_threads(1)
    data = teacher_dataset(4000, seed=0)
    assert magnitude_levels(data) == (0.5, 1.0)
    config = ReferenceCloningConfig(steps=800, max_seconds=600.0)
    levelled, _ = train_reference_policy(data, config=config, progress=False)
    assert levelled.config.magnitude_levels == (0.5, 1.0)  # found in the data by default
    regressed, _ = train_reference_policy(
        data, ReferencePolicyConfig({"state": 7, "instruction": 4}), config, progress=False
    )
    fresh = teacher_dataset(1000, seed=1)
    on_levels = proposal_accuracy(levelled, fresh)["magnitude"]
    assert on_levels > 0.9 and on_levels > proposal_accuracy(regressed, fresh)["magnitude"]
    spoken = {
        levelled.propose({k: v[i : i + 1] for k, v in fresh.observations.items()}).magnitude
        for i in range(200)
    }
    assert spoken <= {0.5, 1.0} and len(spoken) == 2
    save_reference_policy(levelled, tmp_path / "ref")
    assert load_reference_policy(tmp_path / "ref").config.magnitude_levels == (0.5, 1.0)


def test_magnitude_levels_are_checked_and_optional():
    data = teacher_dataset(200, seed=0)
    rng = np.random.default_rng(0)
    continuous = data.proposals.clone()
    continuous[:, 4] = torch.from_numpy(rng.uniform(0.1, 1.0, len(data)).astype(np.float32))
    assert magnitude_levels(NoiseDataset(**{**vars(data), "proposals": continuous})) is None
    for bad in ((), (0.5, 0.5), (1.0, 0.5), (0.5, 1.5), (float("nan"),)):
        with pytest.raises(ValueError, match="magnitude_levels"):
            ReferencePolicyConfig({"state": 7}, magnitude_levels=bad)
    # a checkpoint written before the field existed regresses its magnitude
    old = ReferencePolicyConfig.from_dict({"observation_dims": {"state": 7}})
    assert old.magnitude_levels is None and old.output_dim == 1 + 3 + 9 + 1


@pytest.mark.parametrize(
    "proposal",
    [
        CoarseProposal(source=Source.SCRIPTED, defer=True, reason="near the grasp"),
        CoarseProposal(source=Source.SCRIPTED, magnitude=0.5, gripper=Gripper.CLOSE),
        CoarseProposal(
            source=Source.SCRIPTED, direction=np.array([0.6, -0.8, 0.0]), gripper=Gripper.OPEN
        ),
    ],
)
def test_a_recorded_proposal_decodes_to_the_one_encoded(proposal):
    decoded = decode_proposal(torch.as_tensor(encode_proposal(proposal)))
    assert decoded.defer == proposal.defer and decoded.gripper == proposal.gripper
    assert np.allclose(decoded.direction, proposal.direction, atol=1e-6)
    if not proposal.defer:
        assert decoded.magnitude == pytest.approx(proposal.magnitude)
