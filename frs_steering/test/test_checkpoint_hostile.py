"""Hostile input for the checkpoint loader: random corruptions of a saved policy (byte flips,
truncation, missing files, FIFOs, devices, directories and symlinks where files belong, bogus
manifests) and of *re-signed* checkpoints (bogus JSON configs, wrong dtypes and shapes in the
safetensors, huge declared sizes, non-finite weights). Each case either loads exactly the
original model or raises :class:`CheckpointError`, within a time bound; a re-signed one
either raises CheckpointError or loads exactly what its files say. Never another exception."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as load_safetensors
from safetensors.torch import save

from frs_bringup.testing import time_bound
from frs_steering.checkpoint import (
    CheckpointError,
    load_policy,
    read_config,
    save_policy,
    write_manifest,
)
from frs_steering.learning.noise_policy import (
    NoisePolicy,
    NoisePolicyConfig,
    load_noise_policy,
    save_noise_policy,
)
from frs_steering.model import FlowMatchingPolicy, FlowPolicyConfig
from frs_steering.normalization import fit_normalizer
from frs_steering.policy import ActionSpec

FILES = ("config.json", "model.safetensors", "manifest.json")
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


def _policy() -> FlowMatchingPolicy:
    actions = torch.randn(64, 4, 3, generator=torch.Generator().manual_seed(0))
    spec = ActionSpec(
        horizon=4,
        dim=5,
        real_dims=(0, 1, 2),
        num_steps=4,
        normalizer=fit_normalizer(actions, "quantile"),
    )
    config = FlowPolicyConfig(action_spec=spec, state_dim=6, instruction_dim=8, width=16, depth=2)
    return FlowMatchingPolicy(config, seed=1)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_policy(_policy(), tmp_path_factory.mktemp("ckpt") / "pristine")


def _fresh(pristine: Path, work: Path) -> Path:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(pristine, work, symlinks=True)
    return work


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa
    )


def _outcome(directory: Path, pristine: Path) -> str:
    """'error' or 'same'; a different model or another exception fails the test."""
    with time_bound():
        try:
            loaded = load_policy(directory)
        except CheckpointError:
            with pytest.raises(CheckpointError):
                read_config(directory)  # the config alone is refused as well
            return "error"
    original = load_policy(pristine)
    assert loaded.config == original.config and _same(loaded, original), "a different model"
    return "same"


# ---------------------------------------------------------------- corruptions (not re-signed)


@SETTINGS
@given(
    which=st.sampled_from(FILES),
    position=st.floats(0.0, 1.0, exclude_max=True),
    byte=st.integers(1, 255),
)
def test_flipped_byte_in_any_file(pristine, tmp_path, which, position, byte) -> None:  # noqa: ANN001
    work = _fresh(pristine, tmp_path / "c")
    data = bytearray((work / which).read_bytes())
    data[int(position * len(data))] ^= byte
    (work / which).write_bytes(bytes(data))
    outcome = _outcome(work, pristine)
    # Only the manifest may change harmlessly (e.g. one JSON whitespace for another).
    assert outcome == "error" or which == "manifest.json"


@SETTINGS
@given(which=st.sampled_from(FILES), keep=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_file(pristine, tmp_path, which, keep) -> None:  # noqa: ANN001
    work = _fresh(pristine, tmp_path / "c")
    data = (work / which).read_bytes()
    cut = int(keep * len(data))
    (work / which).write_bytes(data[:cut])
    outcome = _outcome(work, pristine)
    # Only dropping the manifest's trailing newline is harmless.
    assert outcome == "error" or (which == "manifest.json" and not data[cut:].strip())


@SETTINGS
@given(which=st.sampled_from(FILES), tail=st.binary(min_size=1, max_size=64))
def test_appended_bytes(pristine, tmp_path, which, tail) -> None:  # noqa: ANN001
    work = _fresh(pristine, tmp_path / "c")
    with (work / which).open("ab") as stream:
        stream.write(tail)
    outcome = _outcome(work, pristine)
    assert outcome == "error" or (which == "manifest.json" and not tail.strip())


def _replace(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "dangling":
        path.symlink_to(path.parent / "nowhere")
    elif kind == "loop":
        path.symlink_to(path)


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "dev-zero", "dangling", "loop"])
@pytest.mark.parametrize("which", FILES)
def test_non_files_where_files_belong(pristine, tmp_path, which, kind) -> None:  # noqa: ANN001
    work = _fresh(pristine, tmp_path / "c")
    _replace(work / which, kind)
    with time_bound(), pytest.raises(CheckpointError, match=which.replace(".", r"\.")):
        load_policy(work)


def test_symlinked_files_load_the_same(pristine, tmp_path) -> None:  # noqa: ANN001
    work = _fresh(pristine, tmp_path / "c")
    for name in FILES:
        (work / name).rename(tmp_path / name)
        (work / name).symlink_to(tmp_path / name)
    assert _outcome(work, pristine) == "same"
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "nowhere")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "a-file")


def _edit_manifest(directory: Path, edit) -> None:  # noqa: ANN001
    document = json.loads((directory / "manifest.json").read_text())
    edit(document)
    (directory / "manifest.json").write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["files"].pop("config.json"), "lists exactly"),
        (lambda d: d["files"].pop("model.safetensors"), "lists exactly"),
        (lambda d: d["files"].update({"../etc/passwd": d["files"]["config.json"]}), "lists"),
        (lambda d: d["files"]["config.json"].update(size=-1), "not {size, sha256}"),
        (lambda d: d["files"]["config.json"].update(size=2**62), "says"),
        (lambda d: d["files"]["config.json"].update(size=True), "not {size, sha256}"),
        (lambda d: d["files"]["model.safetensors"].update(sha256="0" * 64), "SHA-256"),
        (lambda d: d["files"]["model.safetensors"].update(sha256="ab"), "not {size, sha256}"),
        (lambda d: d.update(format_version=2), "version 1"),
        (lambda d: d.update(extra=1), "not a"),
        (lambda d: d.clear(), "not a"),
    ],
)
def test_bogus_manifest(pristine, tmp_path, edit, message) -> None:  # noqa: ANN001
    work = _fresh(pristine, tmp_path / "c")
    _edit_manifest(work, edit)
    with time_bound(), pytest.raises(CheckpointError, match=message):
        load_policy(work)


def test_huge_manifest_is_not_read(pristine, tmp_path) -> None:  # noqa: ANN001
    work = _fresh(pristine, tmp_path / "c")
    with (work / "manifest.json").open("ab") as stream:
        stream.truncate(2**40)  # sparse: a terabyte on paper
    with time_bound(), pytest.raises(CheckpointError, match="not a checkpoint manifest"):
        load_policy(work)


# ---------------------------------------------------------------- re-signed (consistent) files


def _resign(directory: Path, *, weights: bytes | None = None, config=None) -> None:  # noqa: ANN001
    """Replace files and write a manifest (and weights_sha256) that vouch for them: a
    checkpoint that is intact but wrong inside."""
    if weights is not None:
        (directory / "model.safetensors").write_bytes(weights)
    document = json.loads((directory / "config.json").read_text())
    if config is not None:
        document["config"] = config
    digest = hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    document["weights_sha256"] = digest
    (directory / "config.json").write_text(json.dumps(document))
    write_manifest(directory)


def _signed_outcome(directory: Path) -> str:
    """'error', or 'loaded' when the model holds exactly the file's tensors."""
    with time_bound():
        try:
            loaded = load_policy(directory)
        except CheckpointError:
            return "error"
    tensors = load_safetensors((directory / "model.safetensors").read_bytes())
    state = loaded.state_dict()
    assert state.keys() == tensors.keys()
    assert all(state[k].dtype == t.dtype and torch.equal(state[k], t) for k, t in tensors.items())
    return "loaded"


def _tensors(pristine: Path) -> dict[str, torch.Tensor]:
    return load_safetensors((pristine / "model.safetensors").read_bytes())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@SETTINGS
@given(path=st.lists(st.integers(0, 20), min_size=0, max_size=4), value=JSON)
def test_bogus_config_values(pristine, tmp_path, path, value) -> None:  # noqa: ANN001
    """Any subtree of the model config replaced by any JSON value."""
    work = _fresh(pristine, tmp_path / "c")
    config = json.loads((work / "config.json").read_text())["config"]
    node, keys = config, list(path)
    parent, key = None, None
    while keys and isinstance(node, dict | list) and node:
        index = keys.pop(0)
        key = list(node)[index % len(node)] if isinstance(node, dict) else index % len(node)
        parent, node = node, node[key]
    if parent is None:
        config = value
    else:
        parent[key] = value
    _resign(work, config=config)
    _signed_outcome(work)


@pytest.mark.parametrize(
    ("field", "value"),
    [("width", 10**9), ("depth", 10**6), ("state_dim", 10**12), ("instruction_dim", 2**62)],
)
def test_huge_config_sizes_are_refused_before_allocating(pristine, tmp_path, field, value) -> None:  # noqa: ANN001
    work = _fresh(pristine, tmp_path / "c")
    config = json.loads((work / "config.json").read_text())["config"]
    config[field] = value
    _resign(work, config=config)
    with time_bound(), pytest.raises(CheckpointError):
        load_policy(work)


@SETTINGS
@given(
    name_index=st.integers(0, 1000),
    change=st.sampled_from(
        ["float64", "float16", "bfloat16", "int32", "bool", "reshape", "grow", "drop", "extra"]
        + ["nan", "inf", "scalar"]
    ),
)
def test_wrong_tensors_in_signed_weights(pristine, tmp_path, name_index, change) -> None:  # noqa: ANN001
    work = _fresh(pristine, tmp_path / "c")
    tensors = _tensors(pristine)
    name = sorted(tensors)[name_index % len(tensors)]
    tensor = tensors[name]
    if change in ("float64", "float16", "bfloat16", "int32", "bool"):
        tensors[name] = tensor.to(getattr(torch, change))
    elif change == "reshape":
        tensors[name] = tensor.unsqueeze(0)
    elif change == "grow":
        tensors[name] = torch.cat([tensor.reshape(-1), torch.zeros(1)])
    elif change == "drop":
        del tensors[name]
    elif change == "extra":
        tensors["surprise"] = torch.zeros(3)
    elif change == "scalar":
        tensors[name] = torch.tensor(1.0)
    else:
        flat = tensor.clone().reshape(-1)
        flat[0] = float(change)
        tensors[name] = flat.reshape(tensor.shape)
    _resign(work, weights=save(tensors))
    assert _signed_outcome(work) == "error"


@SETTINGS
@given(
    field=st.sampled_from(["header_size", "offset_end", "offset_start", "shape", "dtype"]),
    value=st.sampled_from([2**31, 2**40, 2**63 - 1, 2**64 - 1, -1, 0]),
)
def test_huge_or_bogus_safetensors_header(pristine, tmp_path, field, value) -> None:  # noqa: ANN001
    """Declared sizes the data cannot back (re-signed, so only the parser stands guard)."""
    work = _fresh(pristine, tmp_path / "c")
    data = (pristine / "model.safetensors").read_bytes()
    (length,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8 : 8 + length])
    # The last tensor in the data: every edit below changes something about it.
    name = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    if field == "header_size":
        weights = struct.pack("<Q", value % 2**64) + data[8:]
    else:
        if field == "offset_end":
            header[name]["data_offsets"][1] = value
        elif field == "offset_start":
            header[name]["data_offsets"][0] = value
        elif field == "shape":
            header[name]["shape"] = [value, 2]
        else:
            header[name]["dtype"] = "F64" if value else "I8"
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        weights = struct.pack("<Q", len(text)) + text + data[8 + length :]
    _resign(work, weights=weights)
    assert _signed_outcome(work) == "error"


@SETTINGS
@given(weights=st.binary(max_size=256))
def test_random_bytes_as_signed_weights(pristine, tmp_path, weights) -> None:  # noqa: ANN001
    work = _fresh(pristine, tmp_path / "c")
    _resign(work, weights=weights)
    assert _signed_outcome(work) == "error"


# ---------------------------------------------------------------- the noise-policy format


def test_noise_policy_checkpoints_share_the_checks(tmp_path) -> None:  # noqa: ANN001
    net = NoisePolicy(NoisePolicyConfig({"state": 6}, 4, 5), seed=0)
    path = save_noise_policy(net, tmp_path / "np")
    assert (path / "manifest.json").is_file()
    assert torch.equal(load_noise_policy(path).input_mean, net.input_mean)
    document = json.loads((path / "config.json").read_text())
    del document["weights_sha256"]
    (path / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="config.json is corrupt"):
        load_noise_policy(path)
    write_manifest(path)  # re-signed, but the config no longer vouches for the weights
    with pytest.raises(CheckpointError, match="weights_sha256 is missing"):
        load_noise_policy(path)
    document["config"]["hidden"] = 10**9
    _resign(path, config=document["config"])
    with time_bound(), pytest.raises(CheckpointError, match="do not match"):
        load_noise_policy(path)


def test_sign_writes_manifests_only_for_weights_the_config_vouches_for(pristine, tmp_path) -> None:  # noqa: ANN001
    """``python -m frs_steering.checkpoint sign`` for checkpoints written before manifests."""
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "frs_steering.checkpoint", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    legacy = _fresh(pristine, tmp_path / "legacy")
    (legacy / "manifest.json").unlink()
    assert cli("verify", str(legacy)).returncode == 2
    done = cli("sign", str(legacy))
    assert done.returncode == 0, done.stderr
    assert _outcome(legacy, pristine) == "same"
    assert cli("verify", str(legacy)).returncode == 0
    (legacy / "manifest.json").unlink()
    data = bytearray((legacy / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (legacy / "model.safetensors").write_bytes(bytes(data))
    done = cli("sign", str(legacy))
    assert done.returncode == 2 and "not signing" in done.stderr
    assert not (legacy / "manifest.json").exists()
