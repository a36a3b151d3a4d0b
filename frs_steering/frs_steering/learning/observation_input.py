"""What the small learned policies share: their input layer, trunk and training loop.

Noise policies (DSBC, DSRL) and reference policies read the same flow-policy observation (a dict
of tensors, e.g. ``state`` and ``instruction``), flattened in a fixed key order and standardized
with statistics stored as buffers, so a checkpoint carries its own normalization. They are
trained the same way: seeded minibatches, AdamW with a cosine schedule, inside a CPU budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from frs_steering.checkpoint import CheckpointError
from frs_steering.train import check_training_options, flushing_denormals


class ObservationMlp(nn.Module):
    """Flattens ``observation_dims``' keys in order, standardizes them (buffers
    ``input_mean`` / ``input_std``, identity until statistics are set) and runs an MLP
    ``trunk`` of ``depth`` x ``hidden``; subclasses add their heads on ``hidden`` features."""

    def __init__(
        self, observation_dims: Mapping[str, int], hidden: int, depth: int, seed: int | None
    ) -> None:
        if seed is not None:
            torch.manual_seed(seed)
        super().__init__()
        self.observation_dims = dict(observation_dims)
        total = sum(self.observation_dims.values())
        self.register_buffer("input_mean", torch.zeros(total))
        self.register_buffer("input_std", torch.ones(total))
        layers: list[nn.Module] = []
        for width in (total, *[hidden] * (depth - 1)):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
        self.trunk = nn.Sequential(*layers)

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


def check_reads_policy_observation(kind: str, path: str, net: ObservationMlp, policy: Any) -> None:
    """CheckpointError unless ``net`` reads the flow policy's observation keys and widths: a
    learned policy trained beside another flow policy would fail at its first call otherwise."""
    config = policy.config
    wanted = {"state": config.state_dim}
    if config.instruction_dim:
        wanted["instruction"] = config.instruction_dim
    if dict(net.observation_dims) != wanted:
        raise CheckpointError(
            f"{kind} {path} reads {dict(net.observation_dims)}; the flow policy observes {wanted}"
        )


@dataclass(frozen=True)
class TrainingBudget:
    """Optimizer settings and the CPU budget of :func:`train_within_budget`."""

    steps: int = 3000
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    max_seconds: float = 55.0  # stop early to stay inside the one-minute CPU budget
    seed: int = 0
    # False keeps subnormal floats (the CPU's default), only to measure what flushing saves
    flush_subnormals: bool = True

    def __post_init__(self) -> None:
        check_training_options(self.steps, self.batch_size, self.learning_rate)
        if not self.max_seconds >= 0:  # also refuses NaN, which would never stop training
            raise ValueError(f"max_seconds must be >= 0, got {self.max_seconds}")


def train_within_budget(
    net: nn.Module,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    samples: int,
    budget: TrainingBudget,
    *,
    desc: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Minimize ``loss_of(sample indices)`` over seeded minibatches of ``samples`` (AdamW,
    cosine schedule over ``budget.steps``), stopping early once ``budget.max_seconds`` of CPU
    time are spent.

    Leaves ``net`` in eval mode; returns the history: per-step ``loss``, ``cpu_seconds``,
    ``steps`` run. Seeded: the same data and settings give the same weights.
    """
    generator = torch.Generator().manual_seed(budget.seed)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=budget.learning_rate, weight_decay=budget.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, budget.steps)
    losses: list[float] = []
    start = time.process_time()
    net.train()
    bar = tqdm(range(budget.steps), desc=desc, disable=not progress, leave=False)
    with flushing_denormals() if budget.flush_subnormals else nullcontext():
        for _ in bar:
            index = torch.randint(samples, (min(budget.batch_size, samples),), generator=generator)
            loss = loss_of(index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if progress and len(losses) % 50 == 0:
                bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
            if time.process_time() - start > budget.max_seconds:
                break
    net.eval()
    return {"loss": losses, "cpu_seconds": time.process_time() - start, "steps": len(losses)}
