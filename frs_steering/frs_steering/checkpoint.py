"""Save and load the built-in policy as safetensors weights plus a JSON config (no pickle).

A checkpoint is a directory with ``config.json`` (format tag, version, model config including
the action spec, time convention and normalizer statistics, and the SHA-256 of the weights)
and ``model.safetensors``. Anything missing, corrupt or mismatched raises
:class:`CheckpointError` naming the problem.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from frs_steering.model import FlowMatchingPolicy, FlowPolicyConfig

FORMAT = "frs_steering.flow_matching_policy"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not match the model it describes."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checkpoint(
    directory: str | Path, format_name: str, config: dict, tensors: dict[str, torch.Tensor]
) -> Path:
    """Write ``tensors`` and a JSON document tagged ``format_name`` (with the weights' SHA-256)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
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
    return directory


def read_checkpoint(
    directory: str | Path, format_name: str, *, device: str | torch.device = "cpu"
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The config object and tensors of a checkpoint written by :func:`write_checkpoint`."""
    directory = Path(directory)
    document = _read_document(directory, format_name)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"no {WEIGHTS_FILE} in checkpoint directory {directory}")
    expected_hash = document.get("weights_sha256")
    if expected_hash is not None and _sha256(weights_path) != expected_hash:
        raise CheckpointError(f"{weights_path} is corrupt: SHA-256 differs from {CONFIG_FILE}")
    try:
        tensors = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {weights_path}: {error}") from error
    return document["config"], tensors


def check_state_dict(
    expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], where: Path
) -> None:
    """Raise :class:`CheckpointError` unless ``tensors`` has exactly the expected names/shapes."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(
        f"{name}: file {tuple(tensors[name].shape)} vs config {tuple(t.shape)}"
        for name, t in expected.items()
        if name in tensors and tensors[name].shape != t.shape
    )
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"weights in {where} do not match its config: missing {missing}, "
            f"unexpected {unexpected}, wrong shape {wrong_shape}"
        )


def save_policy(policy: FlowMatchingPolicy, directory: str | Path) -> Path:
    """Write ``policy`` to ``directory`` (created if needed); returns the directory."""
    return write_checkpoint(directory, FORMAT, policy.config.to_dict(), policy.state_dict())


def read_config(directory: str | Path) -> FlowPolicyConfig:
    """Parse and validate ``config.json`` of a checkpoint without touching the weights."""
    return FlowPolicyConfig.from_dict(_read_document(Path(directory), FORMAT)["config"])


def _read_document(directory: Path, format_name: str) -> dict:
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} in checkpoint directory {directory}")
    try:
        document = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(document, dict) or document.get("format") != format_name:
        raise CheckpointError(f"{config_path} is not a {format_name} checkpoint")
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path} has format_version {document.get('format_version')!r}; "
            f"this code reads version {FORMAT_VERSION}"
        )
    if not isinstance(document.get("config"), dict):
        raise CheckpointError(f"{config_path} has no 'config' object")
    return document


def load_policy(directory: str | Path, *, device: str | torch.device = "cpu") -> FlowMatchingPolicy:
    """Rebuild a policy saved by :func:`save_policy`, in eval mode."""
    directory = Path(directory)
    config_data, tensors = read_checkpoint(directory, FORMAT, device=device)
    try:
        config = FlowPolicyConfig.from_dict(config_data)
    except (ValueError, TypeError) as error:
        where = directory / CONFIG_FILE
        raise CheckpointError(f"invalid model config in {where}: {error}") from error
    policy = FlowMatchingPolicy(config, seed=None)
    check_state_dict(policy.state_dict(), tensors, directory / WEIGHTS_FILE)
    policy.load_state_dict(tensors)
    return policy.to(device).eval()
