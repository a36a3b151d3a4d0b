"""The (observation, noise) dataset format shared by bag replay and DSBC."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from frs_steering.learning.noise_data import NoiseDataset, NoiseDatasetError, concatenate


def _dataset(n: int = 6, seed: int = 0) -> NoiseDataset:
    g = torch.Generator().manual_seed(seed)
    return NoiseDataset(
        observations={"state": torch.randn(n, 5, generator=g), "instruction": torch.randn(n, 3)},
        noise=torch.randn(n, 4, 2, generator=g),
        steered=torch.rand(n, 4, 2, generator=g) > 0.5,
        episode=torch.arange(n) // 2,
        success=torch.tensor([True, True, False, False, True, True])[:n],
        info={"source": "test", "num_steps": 10},
        chunks=torch.randn(n, 4, 2, generator=g),
        proposals=torch.tensor(
            [
                [0.0, 1.0, 0.0, 0.0, 1.0, 0.0],  # move +x, "more"
                [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],  # defer
                [0.0, 0.0, 0.0, 0.0, 0.5, 2.0],  # close the gripper, no motion
                [0.0, 0.0, 0.6, -0.8, 0.5, 1.0],  # move, open
                [0.0, 0.0, 0.0, -1.0, 0.5, 0.0],
                [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            ]
        )[:n],
    )


def test_round_trip_keeps_every_tensor_and_info(tmp_path):
    data = _dataset()
    loaded = NoiseDataset.load(data.save(tmp_path / "d" / "noise.safetensors"))
    assert loaded.info == data.info
    assert torch.equal(loaded.noise, data.noise) and torch.equal(loaded.steered, data.steered)
    assert torch.equal(loaded.episode, data.episode) and torch.equal(loaded.success, data.success)
    assert list(loaded.observations) == ["state", "instruction"]  # the order, not the file's
    assert loaded.observation_dims == {"state": 5, "instruction": 3}
    assert torch.equal(loaded.observations["state"], data.observations["state"])
    assert torch.equal(loaded.chunks, data.chunks)
    assert torch.equal(loaded.proposals, data.proposals)
    assert not list((tmp_path / "d").glob("*.partial"))


def test_select_and_concatenate_keep_samples_aligned():
    data = _dataset()
    good = data.select(data.success)
    assert len(good) == 4 and good.episodes() == 2
    assert torch.equal(good.noise, data.noise[data.success])
    assert torch.equal(good.proposals, data.proposals[data.success])
    both = concatenate([good, good])
    assert len(both) == 8 and both.episodes() == 4  # episode ids stay distinct
    assert torch.equal(both.proposals[4:], good.proposals)
    without = NoiseDataset(**{**vars(good), "proposals": None})
    assert concatenate([good, without]).proposals is None  # only where every part has them


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.noise.__setitem__((0, 0, 0), float("nan")), "NaN"),
        (lambda d: setattr(d, "steered", d.steered[:, :3]), "steered"),
        (lambda d: setattr(d, "episode", d.episode[:2]), "episode"),
        (lambda d: setattr(d, "chunks", d.chunks[:, :2]), "chunks"),
        (lambda d: setattr(d, "proposals", d.proposals[:, :5]), "proposals must be float"),
        (lambda d: d.proposals.__setitem__((0, 4), float("inf")), "proposals contain"),
        (lambda d: d.proposals.__setitem__((1, 1), 1.0), "proposal 1 is not"),  # defer + motion
        (lambda d: d.proposals.__setitem__((0, 1), 0.5), "proposal 0 is not"),  # not unit
        (lambda d: d.proposals.__setitem__((2, 5), 3.0), "proposal 2 is not"),  # no such gripper
        (lambda d: d.proposals.__setitem__((4, 4), 1.5), "proposal 4 is not"),  # magnitude > 1
        (lambda d: setattr(d, "observations", {"state": torch.zeros(2, 5)}), "samples"),
    ],
)
def test_inconsistent_tensors_are_refused(change, message):
    data = _dataset()
    change(data)
    with pytest.raises(NoiseDatasetError, match=message):
        data.validate()


def test_corrupt_truncated_and_foreign_files_give_clear_errors(tmp_path):
    path = _dataset().save(tmp_path / "noise.safetensors")
    raw = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NoiseDatasetError, match="cannot read"):
        NoiseDataset.load(tmp_path / "cut.safetensors")
    with pytest.raises(NoiseDatasetError, match="no noise dataset"):
        NoiseDataset.load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"noise": torch.zeros(1, 2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(NoiseDatasetError, match="is not a"):
        NoiseDataset.load(tmp_path / "other.safetensors")
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    for order, message in (('["state", "image"]', "does not name"), ("[state", "unreadable")):
        save_file(
            load_file(str(path)),
            str(tmp_path / "order.safetensors"),
            metadata={**metadata, "observation_keys": order},
        )
        with pytest.raises(NoiseDatasetError, match=message):
            NoiseDataset.load(tmp_path / "order.safetensors")
