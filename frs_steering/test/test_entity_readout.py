"""The learners' entity read-out: which object and target an instruction names, learned from
what recorded episodes moved, and their positions relative to the end effector."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from frs_steering.checkpoint import CheckpointError, write_checkpoint
from frs_steering.learning.noise_data import NoiseDataset
from frs_steering.learning.noise_policy import (
    DsbcConfig,
    NoisePolicyConfig,
    load_noise_policy,
    save_noise_policy,
    train_dsbc,
)
from frs_steering.learning.observation_input import (
    ENTITY_FEATURES,
    EntityLayout,
    ObservationMlp,
    grounding_labels,
)
from frs_steering.learning.reference_policy import FORMAT as REFERENCE_FORMAT
from frs_steering.learning.reference_policy import (
    ReferenceCloningConfig,
    ReferencePolicyConfig,
    encode_proposal,
    load_reference_policy,
    proposal_accuracy,
    save_reference_policy,
    train_reference_policy,
)
from frs_steering.reasoning import CoarseProposal, Source

#: state = EE xyz, three objects' xyz, three targets' xyz (21 floats)
LAYOUT = EntityLayout(anchor=0, objects=(3, 3), targets=(12, 3))
STATE = 21
INSTRUCTION = 16  # a fixed dense code per (object, target) pair, like a sentence embedding
CODES = np.random.default_rng(7).normal(size=(3, 3, INSTRUCTION)).astype(np.float32)


def named_teacher(state: np.ndarray, obj: int, target: int) -> CoarseProposal:
    """Toward the named object until within 5 cm of it, then from it toward the named target."""
    ee = state[0:3]
    cube = state[3 + 3 * obj : 6 + 3 * obj]
    goal = cube if np.linalg.norm(cube - ee) > 0.05 else state[12 + 3 * target : 15 + 3 * target]
    offset = goal - ee
    signs = np.where(np.abs(offset) > 0.3 * np.abs(offset).max(), np.sign(offset), 0.0)
    if not signs.any():
        return CoarseProposal(source=Source.SCRIPTED, defer=True)
    return CoarseProposal(source=Source.SCRIPTED, direction=signs / np.linalg.norm(signs))


def scene_dataset(episodes: int, seed: int, steps: int = 8) -> NoiseDataset:
    """Episodes in which the named object travels onto the named target (the labels' source)
    and the teacher's proposal at each step."""
    rng = np.random.default_rng(seed)
    states, instructions, proposals, episode = [], [], [], []
    for e in range(episodes):
        obj, target = rng.integers(3), rng.integers(3)
        state = rng.uniform(-0.3, 0.3, size=STATE).astype(np.float32)
        start = state[3 + 3 * obj : 6 + 3 * obj].copy()
        end = state[12 + 3 * target : 15 + 3 * target] + rng.normal(0, 0.01, 3)
        for t in range(steps):
            s = state.copy()
            s[3 + 3 * obj : 6 + 3 * obj] = start + (end - start) * t / (steps - 1)
            s[0:3] = rng.uniform(-0.3, 0.3, 3)
            states.append(s)
            instructions.append(CODES[obj, target])
            proposals.append(encode_proposal(named_teacher(s, obj, target)))
            episode.append(e)
    n = len(states)
    return NoiseDataset(
        observations={
            "state": torch.from_numpy(np.stack(states)),
            "instruction": torch.from_numpy(np.stack(instructions)),
        },
        noise=torch.zeros(n, 2, 3),
        steered=torch.ones(n, 2, 3, dtype=torch.bool),
        episode=torch.tensor(episode),
        success=torch.ones(n, dtype=torch.bool),
        proposals=torch.from_numpy(np.stack(proposals)),
    )


def true_names(data: NoiseDataset) -> torch.Tensor:
    codes = torch.from_numpy(CODES).reshape(9, INSTRUCTION)
    distance = (data.observations["instruction"][:, None] - codes[None]).norm(dim=2)
    pair = distance.argmin(1)
    return torch.stack([pair // 3, pair % 3], 1)


def test_grounding_labels_name_what_the_episode_moved_and_where_it_ended():
    data = scene_dataset(40, seed=0)
    labels = grounding_labels(data.observations, data.episode, data.success, LAYOUT)
    assert torch.equal(labels, true_names(data))
    # a failed episode, an episode where nothing moved and a lift (ends on no target)
    state = data.observations["state"].clone()
    success = data.success.clone()
    success[data.episode == 0] = False
    still = data.episode == 1
    state[still] = state[still][:1].expand(int(still.sum()), -1)
    lift = data.episode == 2
    lifted = int(true_names(data)[lift][0, 0])
    state[lift, 5 + 3 * lifted] += torch.linspace(0, 0.5, int(lift.sum()))
    state[lift, 3 + 3 * lifted] -= torch.linspace(0, 0.4, int(lift.sum()))
    labels = grounding_labels({"state": state}, data.episode, success, LAYOUT)
    assert (labels[data.episode == 0] == -1).all() and (labels[still] == -1).all()
    assert (labels[lift, 0] == lifted).all() and (labels[lift, 1] == -1).all()


def test_the_readout_gives_the_chosen_entities_relative_positions():
    torch.manual_seed(0)
    net = ObservationMlp({"state": STATE, "instruction": INSTRUCTION}, 16, 1, None, LAYOUT)
    assert net.trunk[0].in_features == STATE + INSTRUCTION + ENTITY_FEATURES
    state = torch.rand(5, STATE)
    observations = {"state": state, "instruction": torch.zeros(5, INSTRUCTION)}
    with torch.no_grad():  # a choice fixed by the bias: object 2, target 0
        net.entity_readout.select.weight.zero_()
        net.entity_readout.select.bias.copy_(torch.tensor([0, 0, 50.0, 50.0, 0, 0]))
        flat = net.flatten(observations)
        features = net.entity_readout(flat, state)
        ee, obj, target = state[:, 0:3], state[:, 9:12], state[:, 12:15]
        expected = 10.0 * torch.cat([obj - ee, target - ee, target - obj], 1)
        torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4)
        labels = torch.tensor([[2, 0]] * 5)
        assert float(net.grounding_loss(flat, labels)) < 1e-6
        assert float(net.grounding_loss(flat, torch.tensor([[0, 1]] * 5))) > 10
        assert float(net.grounding_loss(flat, torch.full((5, 2), -1))) == 0.0


def test_a_layout_outside_the_observation_is_refused():
    with pytest.raises(ValueError, match="reads 21 floats of 'state'"):
        ObservationMlp({"state": 20}, 8, 1, 0, LAYOUT)
    with pytest.raises(ValueError, match="the observation has None"):
        ReferencePolicyConfig({"image": 64}, entities=LAYOUT)
    with pytest.raises(ValueError, match="count >= 1"):
        EntityLayout(anchor=0, objects=(3, 0), targets=(12, 3))
    with pytest.raises(ValueError, match="unknown EntityLayout fields"):
        EntityLayout.from_dict({"anchor": 0, "objects": [3, 3], "targets": [12, 3], "x": 1})


@pytest.fixture(scope="module")
def cloned():
    torch.set_num_threads(1)
    data = scene_dataset(600, seed=1)
    config = ReferenceCloningConfig(steps=1500, max_seconds=600.0)
    dims = {"state": STATE, "instruction": INSTRUCTION}
    with_readout, _ = train_reference_policy(
        data, ReferencePolicyConfig(dims, entities=LAYOUT), config, progress=False
    )
    plain, _ = train_reference_policy(data, ReferencePolicyConfig(dims), config, progress=False)
    return with_readout, plain


def test_the_readout_learns_the_named_entities_and_the_teacher(cloned):
    with_readout, plain = cloned
    fresh = scene_dataset(150, seed=2)
    flat = with_readout.flatten({k: v.float() for k, v in fresh.observations.items()})
    with torch.no_grad():
        object_logits, target_logits = with_readout.entity_readout.logits(flat)
    names = true_names(fresh)
    assert (object_logits.argmax(1) == names[:, 0]).float().mean() > 0.99
    assert (target_logits.argmax(1) == names[:, 1]).float().mean() > 0.99
    read, unread = proposal_accuracy(with_readout, fresh), proposal_accuracy(plain, fresh)
    assert read["axes"] > 0.85 and read["axes"] > unread["axes"] + 0.05, (read, unread)


def test_checkpoints_keep_the_layout(cloned, tmp_path):
    net, _ = cloned
    save_reference_policy(net, tmp_path / "ref")
    stored = json.loads((tmp_path / "ref" / "config.json").read_text())["config"]["entities"]
    assert stored == {
        "anchor": 0,
        "objects": [3, 3],
        "targets": [12, 3],
        "key": "state",
        "scale": 10.0,
    }
    loaded = load_reference_policy(tmp_path / "ref")
    assert loaded.config == net.config
    fresh = scene_dataset(5, seed=3)
    observations = {k: v.float() for k, v in fresh.observations.items()}
    with torch.no_grad():
        assert torch.equal(loaded(observations).axes, net(observations).axes)
    edited = json.loads((tmp_path / "ref" / "config.json").read_text())
    (tmp_path / "ref" / "config.json").write_text(json.dumps(edited).replace("12, 3", "19, 3"))
    with pytest.raises(CheckpointError, match="corrupt"):  # the manifest catches an edit
        load_reference_policy(tmp_path / "ref")
    config = net.config.to_dict()
    config["entities"]["targets"] = [19, 3]  # written as such: past the state's 21 floats
    write_checkpoint(tmp_path / "bad", REFERENCE_FORMAT, config, net.state_dict())
    with pytest.raises(CheckpointError, match="reads 28 floats of 'state'"):
        load_reference_policy(tmp_path / "bad")


def test_dsbc_with_a_readout_trains_saves_and_loads(tmp_path):
    torch.set_num_threads(1)
    data = scene_dataset(60, seed=4)
    data.noise = torch.randn(len(data), 2, 3)
    config = NoisePolicyConfig(
        {"state": STATE, "instruction": INSTRUCTION}, horizon=2, dim=3, entities=LAYOUT
    )
    net, history = train_dsbc(data, config, DsbcConfig(steps=200), progress=False)
    assert history["steps"] == 200 and np.isfinite(history["loss"]).all()
    save_noise_policy(net, tmp_path / "dsbc")
    loaded = load_noise_policy(tmp_path / "dsbc")
    assert loaded.config.entities == LAYOUT
    observations = {k: v[:4].float() for k, v in data.observations.items()}
    with torch.no_grad():
        assert torch.equal(loaded(observations), net(observations))
    observations["state"][0] = float("nan")  # garbage in: the bound holds where finite
    with torch.no_grad():
        out = loaded(observations)
    assert out[1:].abs().max() <= config.bound
