"""Save and load models as safetensors weights plus a JSON config, under a SHA-256 manifest.

A checkpoint is a directory with three files the loader reads:

- ``config.json``: format tag, version, the model config (action spec, time convention,
  normalizer statistics, ...) and ``weights_sha256`` (kept for the steering records);
- ``model.safetensors``: the tensors (no pickle);
- ``manifest.json``: the size and SHA-256 of *every other file the loader reads*.

Why a separate manifest: ``config.json`` cannot hold its own hash, and a hash the loader
treats as optional is no check at all (deleting ``weights_sha256`` used to make corrupt
weights load, and nothing covered the normalizer statistics). The manifest holds nothing but
sizes and digests that are each compared with the files, so it needs no hash of its own: a
damaged manifest either fails to parse, names the wrong set of files, or disagrees with a file;
each is refused. The loader hashes the very bytes it then parses (no second read), checks each
file's size before reading it (so a bogus file cannot make it read without bound), and builds
the model's skeleton on the ``meta`` device to compare names, shapes and dtypes before any
real allocation. Other files in the directory (plots, training logs) are never read.

Anything missing, corrupt or mismatched raises :class:`CheckpointError` naming the file.
``python -m frs_steering.checkpoint sign DIR`` writes the manifest of a checkpoint written
before manifests existed (only after its ``weights_sha256`` matches its weights).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

from frs_steering.model import FlowMatchingPolicy, FlowPolicyConfig

FORMAT = "frs_steering.flow_matching_policy"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "frs_steering.checkpoint_manifest"
MANIFEST_VERSION = 1
#: The files a checkpoint's manifest must list: exactly those the loader reads.
MANIFEST_FILES = (CONFIG_FILE, WEIGHTS_FILE)
#: Upper bound on manifest.json's size (it lists two digests; anything larger is not one).
MAX_MANIFEST_BYTES = 64 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")

ModelT = TypeVar("ModelT", bound=nn.Module)


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not match the model it describes."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- manifest


def manifest_document(directory: str | Path) -> dict:
    """The manifest of the files in ``directory`` as they are now (sizes and SHA-256)."""
    directory = Path(directory)
    files = {}
    for name in MANIFEST_FILES:
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"no {name} in checkpoint directory {directory}")
        files[name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "files": files}


def write_manifest(directory: str | Path) -> Path:
    """Write ``manifest.json`` covering the checkpoint files now in ``directory``."""
    directory = Path(directory)
    document = manifest_document(directory)
    partial = directory / f".{MANIFEST_FILE}.partial"
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(directory / MANIFEST_FILE)
    return directory / MANIFEST_FILE


def _regular_file(path: Path, what: str) -> os.stat_result:
    """``stat`` of ``path`` (symlinks followed) if it is a regular file, else CheckpointError."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"no {path.name} in checkpoint directory {path.parent}") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {what} {path}: {error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{what} {path} is not a regular file")
    return info


def _read_exact(path: Path, size: int) -> bytes:
    """Exactly ``size`` bytes of ``path`` (CheckpointError if it holds more or fewer)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(size + 1)
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error}") from None
    if len(data) != size:
        raise CheckpointError(f"{path} changed size while being read")
    return data


def _read_manifest(directory: Path) -> dict[str, dict]:
    """The ``files`` table of ``manifest.json``, schema-checked."""
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    try:
        info = _regular_file(path, "checkpoint manifest")
    except CheckpointError as error:
        raise CheckpointError(
            f"{error}; a checkpoint must carry {MANIFEST_FILE} (SHA-256 of its files). "
            f"Checkpoints written before manifests: `python -m frs_steering.checkpoint sign "
            f"{directory}` after checking where they came from"
        ) from None
    if info.st_size > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{path} is {info.st_size} bytes: not a checkpoint manifest")
    try:
        document = json.loads(_read_exact(path, info.st_size).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if (
        not isinstance(document, dict)
        or document.get("format") != MANIFEST_FORMAT
        or document.get("format_version") != MANIFEST_VERSION
        or set(document) != {"format", "format_version", "files"}
        or not isinstance(document["files"], dict)
    ):
        raise CheckpointError(
            f"{path} is not a {MANIFEST_FORMAT} version {MANIFEST_VERSION} document"
        )
    files = document["files"]
    if set(files) != set(MANIFEST_FILES):
        raise CheckpointError(
            f"{path} lists {sorted(files)}; a checkpoint manifest lists exactly "
            f"{sorted(MANIFEST_FILES)}"
        )
    for name, entry in files.items():
        if (
            not isinstance(entry, dict)
            or set(entry) != {"size", "sha256"}
            or type(entry["size"]) is not int
            or entry["size"] < 0
            or not isinstance(entry["sha256"], str)
            or not _SHA256.fullmatch(entry["sha256"])
        ):
            raise CheckpointError(f"{path}: entry {name!r} is not {{size, sha256}}")
    return files


def read_verified_files(directory: str | Path) -> dict[str, bytes]:
    """The bytes of every file ``manifest.json`` lists, each checked against its size and
    SHA-256 (CheckpointError naming the first file that differs)."""
    return _read_verified(Path(directory))[0]


def _read_verified(directory: Path) -> tuple[dict[str, bytes], dict[str, dict]]:
    """(bytes of each listed file, the manifest's table) after checking every file."""
    files = _read_manifest(directory)
    blobs = {}
    for name in MANIFEST_FILES:
        path, entry = directory / name, files[name]
        info = _regular_file(path, "checkpoint file")
        if info.st_size != entry["size"]:
            raise CheckpointError(
                f"{path} is corrupt: {info.st_size} bytes, {MANIFEST_FILE} says {entry['size']}"
            )
        data = _read_exact(path, entry["size"])
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CheckpointError(f"{path} is corrupt: SHA-256 differs from {MANIFEST_FILE}")
        blobs[name] = data
    return blobs, files


# ---------------------------------------------------------------------------- writing


def write_checkpoint(
    directory: str | Path, format_name: str, config: dict, tensors: dict[str, torch.Tensor]
) -> Path:
    """Write ``tensors``, a JSON document tagged ``format_name`` (with the weights' SHA-256)
    and the manifest over both; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # An interrupted rewrite must not leave an old manifest vouching for new files.
    (directory / MANIFEST_FILE).unlink(missing_ok=True)
    weights_path = directory / WEIGHTS_FILE
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    save_file(tensors, str(weights_path), metadata={"format": format_name})
    document = {
        "format": format_name,
        "format_version": FORMAT_VERSION,
        "config": config,
        "weights_sha256": _sha256(weights_path),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
    write_manifest(directory)
    return directory


# ---------------------------------------------------------------------------- reading


def _parse_document(data: bytes, where: Path, format_name: str) -> dict:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{where} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or document.get("format") != format_name:
        raise CheckpointError(f"{where} is not a {format_name} checkpoint")
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has format_version {document.get('format_version')!r}; "
            f"this code reads version {FORMAT_VERSION}"
        )
    if not isinstance(document.get("config"), dict):
        raise CheckpointError(f"{where} has no 'config' object")
    return document


def read_checkpoint(
    directory: str | Path, format_name: str, *, device: str | torch.device = "cpu"
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The config object and tensors of a checkpoint written by :func:`write_checkpoint`,
    parsed from the bytes the manifest vouches for."""
    directory = Path(directory)
    blobs, files = _read_verified(directory)
    document = _parse_document(blobs[CONFIG_FILE], directory / CONFIG_FILE, format_name)
    weights_path = directory / WEIGHTS_FILE
    if document.get("weights_sha256") != files[WEIGHTS_FILE]["sha256"]:  # verified digest
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: weights_sha256 is missing or differs from {WEIGHTS_FILE}"
        )
    try:
        tensors = load_safetensors(blobs[WEIGHTS_FILE])
    except Exception as error:  # noqa: BLE001 - safetensors raises several types on bad bytes
        raise CheckpointError(
            f"cannot read {weights_path}: {type(error).__name__}: {error}"
        ) from None
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{weights_path}: tensor {name!r} is not finite floating point")
    return document["config"], {name: t.to(device) for name, t in tensors.items()}


def check_state_dict(
    expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], where: Path
) -> None:
    """CheckpointError unless ``tensors`` has exactly the expected names, shapes and dtypes."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(
        f"{name}: file {tuple(tensors[name].shape)} vs config {tuple(t.shape)}"
        for name, t in expected.items()
        if name in tensors and tensors[name].shape != t.shape
    )
    wrong_dtype = sorted(
        f"{name}: file {tensors[name].dtype} vs model {t.dtype}"
        for name, t in expected.items()
        if name in tensors and tensors[name].dtype != t.dtype
    )
    if missing or unexpected or wrong_shape or wrong_dtype:
        raise CheckpointError(
            f"weights in {where} do not match its config: missing {missing}, "
            f"unexpected {unexpected}, wrong shape {wrong_shape}, wrong dtype {wrong_dtype}"
        )


#: What building a model from a config that passed JSON parsing can raise on bad values.
_CONFIG_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError)


@contextlib.contextmanager
def _registration_limit(limit: int, where: Path) -> Iterator[None]:
    """CheckpointError once this thread has registered more than ``limit`` modules,
    parameters and buffers: a config declaring a million layers cannot match a file holding a
    few dozen tensors, and building its skeleton alone would take minutes."""
    thread, count = threading.get_ident(), [0]

    def counted(*_args: object) -> None:
        if threading.get_ident() == thread:
            count[0] += 1
            if count[0] > limit:
                raise CheckpointError(
                    f"model config in {where} declares far more layers than the weights hold"
                )

    module = torch.nn.modules.module
    handles = [
        module.register_module_parameter_registration_hook(counted),
        module.register_module_buffer_registration_hook(counted),
        module.register_module_module_registration_hook(counted),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def build_model(
    directory: Path,
    config_data: dict,
    tensors: dict[str, torch.Tensor],
    parse: Callable[[dict], Any],
    build: Callable[[Any], ModelT],
    *,
    device: str | torch.device = "cpu",
) -> ModelT:
    """``build(parse(config_data))`` loaded with ``tensors``, in eval mode on ``device``.

    The model is first built on the ``meta`` device (no memory) and compared with the
    tensors, so a config declaring huge sizes is refused before anything is allocated."""
    where = directory / CONFIG_FILE
    try:
        config = parse(config_data)
        with torch.device("meta"), _registration_limit(4 * len(tensors) + 64, where):
            skeleton = build(config)
    except _CONFIG_ERRORS as error:
        raise CheckpointError(f"invalid model config in {where}: {error}") from None
    except RuntimeError as error:
        raise CheckpointError(f"model config in {where} cannot be built: {error}") from None
    check_state_dict(skeleton.state_dict(), tensors, directory / WEIGHTS_FILE)
    model = build(config)
    model.load_state_dict(tensors)
    return model.to(device).eval()


def load_model(
    directory: str | Path,
    format_name: str,
    parse: Callable[[dict], Any],
    build: Callable[[Any], ModelT],
    *,
    device: str | torch.device = "cpu",
) -> ModelT:
    """The model of a checkpoint written by :func:`write_checkpoint` with ``format_name``:
    verified (:func:`read_checkpoint`), then built as :func:`build_model` builds it."""
    directory = Path(directory)
    config_data, tensors = read_checkpoint(directory, format_name, device=device)
    return build_model(directory, config_data, tensors, parse, build, device=device)


def save_policy(policy: FlowMatchingPolicy, directory: str | Path) -> Path:
    """Write ``policy`` to ``directory`` (created if needed); returns the directory."""
    return write_checkpoint(directory, FORMAT, policy.config.to_dict(), policy.state_dict())


def read_config(directory: str | Path) -> FlowPolicyConfig:
    """Parse and validate the verified ``config.json`` of a checkpoint."""
    directory = Path(directory)
    where = directory / CONFIG_FILE
    document = _parse_document(read_verified_files(directory)[CONFIG_FILE], where, FORMAT)
    try:
        return FlowPolicyConfig.from_dict(document["config"])
    except _CONFIG_ERRORS as error:
        raise CheckpointError(f"invalid model config in {where}: {error}") from None


def load_policy(directory: str | Path, *, device: str | torch.device = "cpu") -> FlowMatchingPolicy:
    """Rebuild a policy saved by :func:`save_policy`, in eval mode."""
    build = functools.partial(FlowMatchingPolicy, seed=None)
    return load_model(directory, FORMAT, FlowPolicyConfig.from_dict, build, device=device)


# ---------------------------------------------------------------------------- command line


def sign(directory: str | Path) -> Path:
    """Write the manifest of a checkpoint that predates manifests, after checking that its
    ``config.json`` parses and its ``weights_sha256`` matches its weights."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    _regular_file(config_path, "checkpoint file")
    _regular_file(weights_path, "checkpoint file")
    try:
        document = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config_path} is not valid JSON: {error}") from None
    recorded = document.get("weights_sha256") if isinstance(document, dict) else None
    if recorded != _sha256(weights_path):
        raise CheckpointError(
            f"{config_path}: weights_sha256 is missing or differs from {WEIGHTS_FILE}; "
            "not signing weights nothing vouches for"
        )
    return write_manifest(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Checkpoint manifests (SHA-256 of each file).")
    sub = parser.add_subparsers(dest="command", required=True)
    sign_parser = sub.add_parser("sign", help="write manifest.json of pre-manifest checkpoints")
    sign_parser.add_argument("directories", nargs="+", type=Path)
    verify_parser = sub.add_parser("verify", help="check every file against manifest.json")
    verify_parser.add_argument("directories", nargs="+", type=Path)
    args = parser.parse_args(argv)
    code = 0
    for directory in args.directories:
        try:
            if args.command == "sign":
                print(f"signed {sign(directory)}")
            else:
                read_verified_files(directory)
                print(f"ok {directory}")
        except CheckpointError as error:
            print(f"error: {error}", file=sys.stderr)
            code = 2
    return code


if __name__ == "__main__":
    sys.exit(main())
