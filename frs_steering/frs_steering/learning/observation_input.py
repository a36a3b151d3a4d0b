"""The input layer the small learned policies share: observation dict -> standardized features.

Noise policies (DSBC, DSRL) and reference policies read the same flow-policy observation (a dict
of tensors, e.g. ``state`` and ``instruction``), flattened in a fixed key order and standardized
with statistics stored as buffers, so a checkpoint carries its own normalization.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class StandardizedInput(nn.Module):
    """Flattens ``observation_dims``' keys in order and standardizes them (buffers
    ``input_mean`` / ``input_std``, identity until statistics are set)."""

    def __init__(self, observation_dims: Mapping[str, int]) -> None:
        super().__init__()
        self.observation_dims = dict(observation_dims)
        total = sum(self.observation_dims.values())
        self.register_buffer("input_mean", torch.zeros(total))
        self.register_buffer("input_std", torch.ones(total))

    @property
    def input_width(self) -> int:
        return sum(self.observation_dims.values())

    def set_input_statistics(self, observations: Mapping[str, torch.Tensor]) -> None:
        """Standardize inputs with the data's mean and std (see :meth:`set_flat_statistics`)."""
        self.set_flat_statistics(self.flatten(observations, standardize=False))

    def set_flat_statistics(self, flat: torch.Tensor, min_std: float = 1e-2) -> None:
        """Mean and std per feature of ``[N, features]``; features that hardly vary in the data
        (std <= ``min_std``: metres, radians, embedding units) are only centred, so a later
        small change (a cube nudged that never moved in the data) stays a small input."""
        std = flat.std(0) if len(flat) > 1 else torch.zeros_like(flat[0])
        self.input_mean.copy_(flat.mean(0))
        self.input_std.copy_(torch.where(std > min_std, std, torch.ones_like(std)))

    def flatten(
        self, observations: Mapping[str, torch.Tensor], standardize: bool = True
    ) -> torch.Tensor:
        """``[B, sum(observation_dims)]`` in the config's key order."""
        parts = []
        for key, width in self.observation_dims.items():
            if key not in observations:
                raise ValueError(f"observation lacks {key!r}; needs {list(self.observation_dims)}")
            value = observations[key].reshape(observations[key].shape[0], -1).float()
            if value.shape[1] != width:
                raise ValueError(
                    f"observation {key!r} has width {value.shape[1]}, expected {width}"
                )
            parts.append(value)
        flat = torch.cat(parts, dim=1)
        return self.standardize(flat) if standardize else flat

    def standardize(self, flat: torch.Tensor) -> torch.Tensor:
        """Flat features -> the network's standardized input."""
        return (flat - self.input_mean) / self.input_std


def mlp_trunk(width: int, hidden: int, depth: int) -> nn.Sequential:
    """``depth`` x (Linear -> SiLU) from ``width`` to ``hidden`` features."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    return nn.Sequential(*layers)
