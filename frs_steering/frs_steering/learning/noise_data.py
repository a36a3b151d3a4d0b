"""(observation, noise) datasets: what noise policies (DSBC) and noise-space RL learn from.

Each sample is one action chunk: the policy observation it was computed from, the noise the
flow policy generated it from (``[horizon, dim]`` in the policy's normalized, padded space),
which elements of that noise came from steering (reversal) rather than a fresh draw, the
episode it belongs to with that episode's outcome, and optionally the chunk the noise generated
(normalized, padded; what standard behaviour cloning trains on) and the reasoner's coarse
proposal the chunk was steered toward (``proposals``, :data:`PROPOSAL_FIELDS`; what reference
cloning trains on). Sources: closed-loop FRS rollouts in the simulation, and demonstrations
reversed into noise (teleoperated chunks).

Stored as one safetensors file: tensors ``obs.<key>``, ``noise``, ``steered``, ``episode``,
``success``, optional ``chunks`` and ``proposals``, and a JSON ``info`` string in the header
(checkpoint, method, solver, steps, source). No pickle. Anything malformed raises
:class:`NoiseDatasetError` naming the problem.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "frs_steering.noise_dataset"
FORMAT_VERSION = 1
_OBS_PREFIX = "obs."
#: Columns of ``NoiseDataset.proposals``: a reasoner's :class:`~frs_steering.reasoning.
#: CoarseProposal` per chunk (defer 0/1, the unit direction, magnitude, gripper as its int value).
PROPOSAL_FIELDS = ("defer", "direction_x", "direction_y", "direction_z", "magnitude", "gripper")


class NoiseDatasetError(ValueError):
    """A noise dataset cannot be read or its tensors disagree with each other."""


@dataclass
class NoiseDataset:
    """Aligned per-chunk tensors (first axis = sample) plus free-form ``info``."""

    observations: dict[str, torch.Tensor]  # key -> [N, ...] (the policy's observation keys)
    noise: torch.Tensor  # [N, horizon, dim] float32, policy space
    steered: torch.Tensor  # [N, horizon, dim] bool: element came from steering, not a fresh draw
    episode: torch.Tensor  # [N] int64 episode id
    success: torch.Tensor  # [N] bool: the episode succeeded
    info: dict[str, Any] = field(default_factory=dict)
    chunks: torch.Tensor | None = None  # [N, horizon, dim] what the noise generated (optional)
    proposals: torch.Tensor | None = None  # [N, len(PROPOSAL_FIELDS)] the reasoner's (optional)

    def __post_init__(self) -> None:
        self.validate()

    def __len__(self) -> int:
        return int(self.noise.shape[0])

    def validate(self) -> None:
        """Raise :class:`NoiseDatasetError` unless shapes, dtypes and values agree."""
        if self.noise.ndim != 3 or not self.noise.is_floating_point():
            raise NoiseDatasetError(
                f"noise must be float [N, horizon, dim], got {self.noise.dtype} "
                f"{tuple(self.noise.shape)}"
            )
        n = self.noise.shape[0]
        if self.steered.dtype != torch.bool or self.steered.shape != self.noise.shape:
            raise NoiseDatasetError(
                f"steered must be bool {tuple(self.noise.shape)}, got {self.steered.dtype} "
                f"{tuple(self.steered.shape)}"
            )
        for name, tensor in (("episode", self.episode), ("success", self.success)):
            if tensor.shape != (n,):
                raise NoiseDatasetError(f"{name} must have shape ({n},), got {tuple(tensor.shape)}")
        if self.success.dtype != torch.bool:
            raise NoiseDatasetError(f"success must be bool, got {self.success.dtype}")
        if not self.observations:
            raise NoiseDatasetError("no observation tensors")
        for key, tensor in self.observations.items():
            if tensor.shape[:1] != (n,):
                raise NoiseDatasetError(
                    f"observation {key!r} has {tuple(tensor.shape)[:1]} samples, noise has {n}"
                )
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise NoiseDatasetError(f"observation {key!r} contains NaN or Inf")
        if not torch.isfinite(self.noise).all():
            raise NoiseDatasetError("noise contains NaN or Inf")
        if self.chunks is not None and (
            self.chunks.shape != self.noise.shape or not torch.isfinite(self.chunks).all()
        ):
            raise NoiseDatasetError(
                f"chunks must be finite {tuple(self.noise.shape)} like noise, got "
                f"{tuple(self.chunks.shape)}"
            )
        if self.proposals is not None:
            self._validate_proposals(n)

    def _validate_proposals(self, n: int) -> None:
        shape = (n, len(PROPOSAL_FIELDS))
        if tuple(self.proposals.shape) != shape or not self.proposals.is_floating_point():
            raise NoiseDatasetError(
                f"proposals must be float {shape}, got {self.proposals.dtype} "
                f"{tuple(self.proposals.shape)}"
            )
        if not torch.isfinite(self.proposals).all():
            raise NoiseDatasetError("proposals contain NaN or Inf")
        defer, direction = self.proposals[:, 0], self.proposals[:, 1:4]
        magnitude, gripper = self.proposals[:, 4], self.proposals[:, 5]
        norm = direction.norm(dim=1)
        bad = (
            ~((defer == 0) | (defer == 1))
            | ~((norm < 1e-6) | ((norm - 1).abs() < 1e-3))
            | ((defer == 1) & (norm >= 1e-6))
            | (magnitude < 0)
            | (magnitude > 1)
            | ~((gripper == 0) | (gripper == 1) | (gripper == 2))
        )
        if bad.any():
            row = int(torch.nonzero(bad)[0])
            values = dict(zip(PROPOSAL_FIELDS, self.proposals[row].tolist(), strict=True))
            raise NoiseDatasetError(
                f"proposal {row} is not a coarse proposal: {values} (want defer 0/1, a unit "
                "direction or a zero one (always zero on a deferral), magnitude in [0, 1], "
                "gripper 0/1/2)"
            )

    @property
    def observation_dims(self) -> dict[str, int]:
        """Observation key -> flattened width of one sample, in the dataset's key order (what
        a policy learning from it reads)."""
        return {key: int(tensor[0].numel()) for key, tensor in self.observations.items()}

    @property
    def chunk_shape(self) -> tuple[int, int]:
        return int(self.noise.shape[1]), int(self.noise.shape[2])

    def observation(self, index: int | slice | torch.Tensor) -> dict[str, torch.Tensor]:
        """The policy observation of the selected samples (batched)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return {key: tensor[index] for key, tensor in self.observations.items()}

    def select(self, keep: torch.Tensor) -> NoiseDataset:
        """The samples where the bool ``keep`` is True (e.g. ``dataset.success``)."""
        return NoiseDataset(
            observations={key: tensor[keep] for key, tensor in self.observations.items()},
            noise=self.noise[keep],
            steered=self.steered[keep],
            episode=self.episode[keep],
            success=self.success[keep],
            info=dict(self.info),
            chunks=None if self.chunks is None else self.chunks[keep],
            proposals=None if self.proposals is None else self.proposals[keep],
        )

    def episodes(self) -> int:
        return int(torch.unique(self.episode).numel())

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file (parent directories created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {_OBS_PREFIX + k: v.contiguous().cpu() for k, v in self.observations.items()}
        tensors.update(
            noise=self.noise.float().contiguous().cpu(),
            steered=self.steered.contiguous().cpu(),
            episode=self.episode.long().contiguous().cpu(),
            success=self.success.contiguous().cpu(),
        )
        if self.chunks is not None:
            tensors["chunks"] = self.chunks.float().contiguous().cpu()
        if self.proposals is not None:
            tensors["proposals"] = self.proposals.float().contiguous().cpu()
        metadata = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "info": json.dumps(self.info, sort_keys=True),
            # safetensors stores tensors by sorted name; the observation order is part of the
            # data (a policy trained on it flattens its inputs in this order)
            "observation_keys": json.dumps(list(self.observations)),
        }
        tmp = path.with_name(path.name + ".partial")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)  # never leave a half-written dataset under the final name
        return path

    @classmethod
    def load(cls, path: str | Path) -> NoiseDataset:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise NoiseDatasetError(f"no noise dataset at {path}")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise NoiseDatasetError(f"cannot read noise dataset {path}: {error}") from error
        if metadata.get("format") != FORMAT:
            raise NoiseDatasetError(f"{path} is not a {FORMAT} file")
        if metadata.get("format_version") != str(FORMAT_VERSION):
            raise NoiseDatasetError(
                f"{path} has format_version {metadata.get('format_version')!r}; this code reads "
                f"{FORMAT_VERSION}"
            )
        missing = [k for k in ("noise", "steered", "episode", "success") if k not in tensors]
        if missing:
            raise NoiseDatasetError(f"{path} lacks tensors {missing}")
        try:
            info = json.loads(metadata.get("info", "{}"))
        except json.JSONDecodeError as error:
            raise NoiseDatasetError(f"{path} has an unreadable info header: {error}") from error
        observations = {
            k[len(_OBS_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_OBS_PREFIX)
        }
        try:
            order = json.loads(metadata.get("observation_keys", "[]"))
        except json.JSONDecodeError as error:
            raise NoiseDatasetError(
                f"{path} has an unreadable observation order: {error}"
            ) from error
        if order:  # files written before the order was kept load in the file's (sorted) order
            if not isinstance(order, list) or sorted(map(str, order)) != sorted(observations):
                raise NoiseDatasetError(
                    f"{path}: observation order {order} does not name its observation tensors "
                    f"{sorted(observations)}"
                )
            observations = {key: observations[key] for key in order}
        return cls(
            observations=observations,
            noise=tensors["noise"],
            steered=tensors["steered"],
            episode=tensors["episode"],
            success=tensors["success"],
            info=info,
            chunks=tensors.get("chunks"),
            proposals=tensors.get("proposals"),
        )


def concatenate(datasets: Sequence[NoiseDataset], info: Mapping[str, Any] | None = None):
    """One dataset from several with the same observation keys (episode ids kept distinct)."""
    if not datasets:
        raise NoiseDatasetError("nothing to concatenate")
    keys = set(datasets[0].observations)
    if any(set(d.observations) != keys for d in datasets):
        raise NoiseDatasetError("datasets have different observation keys")
    with_chunks = all(d.chunks is not None for d in datasets)
    with_proposals = all(d.proposals is not None for d in datasets)
    offset, episodes = 0, []
    for dataset in datasets:
        episodes.append(dataset.episode + offset)
        offset = int(episodes[-1].max()) + 1 if len(dataset) else offset
    return NoiseDataset(
        observations={k: torch.cat([d.observations[k] for d in datasets]) for k in keys},
        noise=torch.cat([d.noise for d in datasets]),
        steered=torch.cat([d.steered for d in datasets]),
        episode=torch.cat(episodes),
        success=torch.cat([d.success for d in datasets]),
        info=dict(info if info is not None else datasets[0].info),
        chunks=torch.cat([d.chunks for d in datasets]) if with_chunks else None,
        proposals=torch.cat([d.proposals for d in datasets]) if with_proposals else None,
    )
