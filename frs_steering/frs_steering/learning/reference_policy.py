"""Reference policies: small networks obs -> the reasoner's coarse proposal (reference cloning).

A reference policy replaces the reasoner, not the steering. It clones the coarse proposals a
reasoner made in recorded rollouts (defer or not, a gripper command, per-axis signs of the
direction, the magnitude) and FRS turns its proposal into the chunk exactly as it turns the
reasoner's. A noise policy (DSBC) instead regresses the continuous noise FRS found, which on the
hidden-pairing generalist does not generalize to unseen episodes (docs/learning.md); a proposal
is a few discrete choices per chunk.

The direction is cloned per axis, as a coarse reasoner states it ("left and down"): each axis
is -1, 0 or +1 (an axis counts when its component is at least :data:`AXIS_THRESHOLD`), and the
proposal's direction is the unit vector of the predicted signs. A predicted proposal that
neither moves nor commands the gripper defers.

The magnitude is regressed, or, where the reasoner speaks in a few levels ("more", "less", "a
little": ``ReferencePolicyConfig.magnitude_levels``, found in the data by
:func:`magnitude_levels`), classified among them: a regression toward the mean of two levels
asks for speeds the reasoner never asked for, and on the simulated benchmark those cost places
(docs/learning.md).

Two heads (``ReferencePolicyConfig.head``): ``fields`` predicts each field on its own (defer,
gripper, axes), so a motion and a gripper command can combine where the reasoner never combined
them; ``kinds`` predicts the kind of proposal jointly (:data:`KINDS`: defer, a gripper command
without motion, or a motion with the gripper kept, opened or closed), then the axes of a motion.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from frs_steering.checkpoint import load_model, write_checkpoint
from frs_steering.learning.noise_data import NoiseDataset
from frs_steering.learning.observation_input import (
    EntityLayout,
    ObservationMlp,
    TrainingBudget,
    check_reads_policy_observation,
    entity_labels,
    train_within_budget,
)
from frs_steering.reasoning import CoarseProposal, Gripper, Source

#: On-disk format id of reference-policy checkpoints.
FORMAT = "frs_steering.reference_policy"
#: A direction component at least this large (in magnitude) counts as a commanded axis.
AXIS_THRESHOLD = 0.25
_GRIPPERS = len(Gripper)
HEADS = ("fields", "kinds")
#: Motions with at most this many distinct magnitudes are read as spoken in levels.
MAX_MAGNITUDE_LEVELS = 8
#: The proposal kinds of the ``kinds`` head: index 0 defers; 1 + gripper: no motion (1, no
#: motion with the gripper kept, is read as a deferral); 1 + GRIPPERS + gripper: a motion.
KINDS = (
    "defer",
    *(f"still_{g.name.lower()}" for g in Gripper),
    *(f"move_{g.name.lower()}" for g in Gripper),
)


def encode_proposal(proposal: CoarseProposal) -> np.ndarray:
    """One row of ``NoiseDataset.proposals`` (:data:`PROPOSAL_FIELDS`)."""
    row = [float(proposal.defer), *proposal.direction.tolist(), proposal.magnitude]
    return np.asarray([*row, float(int(proposal.gripper))], dtype=np.float32)


def decode_proposal(row: torch.Tensor, source: Source = Source.SCRIPTED) -> CoarseProposal:
    """The proposal one row of ``NoiseDataset.proposals`` records (inverse of
    :func:`encode_proposal`; ``source``: who made it)."""
    defer, x, y, z, magnitude, gripper = (float(v) for v in row)
    if defer:
        return CoarseProposal(source=source, defer=True, reason="recorded deferral")
    return CoarseProposal(
        source=source,
        direction=np.array([x, y, z]),
        magnitude=magnitude,
        gripper=Gripper(int(gripper)),
    )


@dataclass(frozen=True)
class ReferencePolicyConfig:
    """Architecture of a :class:`ReferencePolicy` (saved with its checkpoint)."""

    observation_dims: dict[str, int]  # observation key -> flattened width
    hidden: int = 256
    depth: int = 2
    head: str = "fields"  # one of HEADS
    # which object and target the instruction names, read out of the state (None: plain MLP)
    entities: EntityLayout | None = None
    # the magnitudes the reasoner speaks in, increasing (None: any magnitude, regressed)
    magnitude_levels: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "entities", EntityLayout.from_dict(self.entities))
        if self.magnitude_levels is not None:
            levels = tuple(float(v) for v in self.magnitude_levels)
            if not levels or not all(0.0 <= v <= 1.0 for v in levels):  # NaN fails too
                raise ValueError(f"magnitude_levels must lie in [0, 1], got {levels}")
            if any(b <= a for a, b in itertools.pairwise(levels)):
                raise ValueError(f"magnitude_levels must increase strictly, got {levels}")
            object.__setattr__(self, "magnitude_levels", levels)
        if self.entities is not None:
            self.entities.check_fits(self.observation_dims)
        if not self.observation_dims:
            raise ValueError("observation_dims is empty")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        for name in ("hidden", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"ReferencePolicyConfig.{name} must be a positive int, got {value!r}"
                )
        object.__setattr__(
            self, "observation_dims", {str(k): int(v) for k, v in self.observation_dims.items()}
        )

    @property
    def output_dim(self) -> int:
        decisions = 1 + _GRIPPERS if self.head == "fields" else len(KINDS)
        return decisions + 9 + self.magnitude_width  # + three axes of three signs + magnitude

    @property
    def magnitude_width(self) -> int:
        """Outputs of the magnitude head: one per level, or one regressed value."""
        return 1 if self.magnitude_levels is None else len(self.magnitude_levels)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["entities"] = None if self.entities is None else self.entities.to_dict()
        if self.magnitude_levels is not None:
            data["magnitude_levels"] = list(self.magnitude_levels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferencePolicyConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ReferencePolicyConfig fields {sorted(unknown)}")
        return cls(**data)


@dataclass
class ProposalLogits:
    """The heads of a :class:`ReferencePolicy` for a batch (logits; magnitude in [0, 1]):
    ``defer`` and ``gripper`` for the ``fields`` head, ``kind`` for the ``kinds`` head,
    ``magnitude_level`` where the magnitude is classified among levels."""

    axes: torch.Tensor  # [B, 3, 3] (per axis: -1, 0, +1)
    magnitude: torch.Tensor  # [B] (the likeliest level's value where classified)
    defer: torch.Tensor | None = None  # [B]
    gripper: torch.Tensor | None = None  # [B, 3] (Gripper order)
    kind: torch.Tensor | None = None  # [B, len(KINDS)]
    magnitude_level: torch.Tensor | None = None  # [B, levels]

    def decisions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(defer [B] bool, gripper [B] long, moves [B] bool or None for the fields head, whose
        axes alone say whether it moves)."""
        if self.kind is None:
            return self.defer > 0, self.gripper.argmax(-1), None
        kind = self.kind.argmax(-1)
        moves = kind > _GRIPPERS
        gripper = torch.where(moves, kind - 1 - _GRIPPERS, kind - 1).clamp_min(0)
        return kind <= 1, gripper, moves


class ReferencePolicy(ObservationMlp):
    """Standardized observation -> MLP -> the heads of a coarse proposal."""

    def __init__(self, config: ReferencePolicyConfig, seed: int | None = 0) -> None:
        super().__init__(
            config.observation_dims, config.hidden, config.depth, seed, config.entities
        )
        self.config = config
        self.output = nn.Linear(config.hidden, config.output_dim)

    def forward(self, observations: dict[str, torch.Tensor]) -> ProposalLogits:
        return self.heads(self.flatten(observations))

    def heads(self, standardized: torch.Tensor) -> ProposalLogits:
        """The proposal's logits from standardized flat inputs."""
        out = self.output(self.encode(standardized))
        width = self.config.magnitude_width
        magnitude = out[:, -width:]
        common: dict[str, Any] = {"axes": out[:, -9 - width : -width].reshape(-1, 3, 3)}
        if self.config.magnitude_levels is None:
            common["magnitude"] = torch.sigmoid(magnitude[:, 0])
        else:
            levels = magnitude.new_tensor(self.config.magnitude_levels)
            common |= {"magnitude": levels[magnitude.argmax(-1)], "magnitude_level": magnitude}
        if self.config.head == "kinds":
            return ProposalLogits(kind=out[:, : len(KINDS)], **common)
        return ProposalLogits(defer=out[:, 0], gripper=out[:, 1 : 1 + _GRIPPERS], **common)

    @torch.no_grad()
    def propose(self, observation: dict[str, torch.Tensor]) -> CoarseProposal:
        """The proposal for a batch-of-one observation (the policy's own observation dict)."""
        batch = {k: torch.as_tensor(v) for k, v in observation.items()}
        if any(v.shape[0] != 1 for v in batch.values()):
            raise ValueError("propose takes a batch of one observation")
        if any(v.is_floating_point() and not torch.isfinite(v).all() for v in batch.values()):
            return CoarseProposal(
                source=Source.LEARNED, defer=True, reason="non-finite observation"
            )
        logits = self(batch)
        defer, gripper_index, moves = logits.decisions()
        if bool(defer[0]):
            return CoarseProposal(source=Source.LEARNED, defer=True, reason="cloned: defer")
        signs = logits.axes[0].argmax(-1).float() - 1.0
        if moves is not None and not bool(moves[0]):
            signs = torch.zeros(3)
        elif moves is not None and not signs.any():  # a motion: its likeliest axis and sign
            moving = logits.axes[0].softmax(-1)[:, [0, 2]]
            axis, side = divmod(int(moving.argmax()), 2)
            signs[axis] = 1.0 if side else -1.0
        norm = float(signs.norm())
        gripper = Gripper(int(gripper_index[0]))
        if norm == 0.0 and gripper is Gripper.KEEP:
            return CoarseProposal(source=Source.LEARNED, defer=True, reason="cloned: no motion")
        magnitude = float(logits.magnitude[0])
        return CoarseProposal(
            source=Source.LEARNED,
            direction=(signs / norm).numpy() if norm else np.zeros(3),
            magnitude=min(max(magnitude, 0.0), 1.0) if math.isfinite(magnitude) else 0.5,
            gripper=gripper,
            reason="cloned",
        )


@dataclass(frozen=True)
class ProposalTargets:
    """Training targets of a batch of recorded proposals."""

    defer: torch.Tensor  # [N] float 0/1
    gripper: torch.Tensor  # [N] long
    axes: torch.Tensor  # [N, 3] long in {0, 1, 2} (sign + 1)
    magnitude: torch.Tensor  # [N] float
    moves: torch.Tensor  # [N] bool: a non-deferring proposal with a direction
    kind: torch.Tensor  # [N] long: the index in KINDS
    magnitude_level: torch.Tensor  # [N] long: the nearest level (0 without levels)

    def select(self, index: torch.Tensor) -> ProposalTargets:
        """The targets of the samples at ``index``."""
        fields = dataclasses.fields(self)
        return ProposalTargets(**{f.name: getattr(self, f.name)[index] for f in fields})


def magnitude_levels(dataset: NoiseDataset) -> tuple[float, ...] | None:
    """The distinct magnitudes of the recorded motions, increasing, when there are at most
    :data:`MAX_MAGNITUDE_LEVELS` (a reasoner that speaks in levels); else None."""
    if dataset.proposals is None:
        raise ValueError("the dataset has no recorded proposals")
    targets = proposal_targets(dataset.proposals.float())
    spoken = torch.unique(targets.magnitude[targets.moves].double().round(decimals=6))
    if len(spoken) == 0 or len(spoken) > MAX_MAGNITUDE_LEVELS:
        return None
    return tuple(float(v) for v in spoken)


def proposal_targets(
    proposals: torch.Tensor, levels: tuple[float, ...] | None = None
) -> ProposalTargets:
    """Per-head targets of ``NoiseDataset.proposals`` rows (``levels``: the magnitude levels
    the policy classifies among)."""
    direction = proposals[:, 1:4]
    axes = torch.where(direction.abs() >= AXIS_THRESHOLD, direction.sign(), 0.0).long() + 1
    defer = proposals[:, 0]
    gripper = proposals[:, 5].long()
    moves = (defer == 0) & (direction.norm(dim=1) > 0)
    kind = torch.where(defer == 1, 0, 1 + gripper + _GRIPPERS * moves.long())
    magnitude = proposals[:, 4]
    level = torch.zeros_like(gripper)
    if levels is not None:
        level = (magnitude[:, None] - magnitude.new_tensor(levels)).abs().argmin(-1)
    return ProposalTargets(
        defer=defer,
        gripper=gripper,
        axes=axes,
        magnitude=magnitude,
        moves=moves,
        kind=kind,
        magnitude_level=level,
    )


def proposal_loss(logits: ProposalLogits, targets: ProposalTargets) -> torch.Tensor:
    """The fields head: defer BCE on every sample, gripper and axes CE where the reasoner did
    not defer. The kinds head: kind CE on every sample, axes CE where it moved. Both: magnitude
    MSE where it moved (level CE where classified)."""
    if logits.kind is not None:
        loss = nn.functional.cross_entropy(logits.kind, targets.kind)
        axes_on = targets.moves
    else:
        loss = nn.functional.binary_cross_entropy_with_logits(logits.defer, targets.defer)
        axes_on = targets.defer == 0
        if axes_on.any():
            gripper = nn.functional.cross_entropy(logits.gripper[axes_on], targets.gripper[axes_on])
            loss = loss + gripper
    if axes_on.any():
        axes = logits.axes[axes_on].reshape(-1, 3)
        loss = loss + 3 * nn.functional.cross_entropy(axes, targets.axes[axes_on].reshape(-1))
    moved = targets.moves
    if moved.any() and logits.magnitude_level is not None:
        level = logits.magnitude_level[moved]
        loss = loss + nn.functional.cross_entropy(level, targets.magnitude_level[moved])
    elif moved.any():
        loss = loss + (logits.magnitude[moved] - targets.magnitude[moved]).pow(2).mean()
    return loss


@dataclass(frozen=True)
class ReferenceCloningConfig(TrainingBudget):
    """The optimizer and CPU budget of :func:`train_reference_policy`."""

    steps: int = 10000


def train_reference_policy(
    dataset: NoiseDataset,
    network: ReferencePolicyConfig | None = None,
    config: ReferenceCloningConfig = ReferenceCloningConfig(),
    *,
    progress: bool = True,
) -> tuple[ReferencePolicy, dict[str, Any]]:
    """Fit a reference policy to the recorded proposals of ``dataset`` (every chunk: the
    reasoner's proposal is a label whether or not the episode succeeded).

    Returns the policy (eval mode) and a history: per-step ``loss``, ``cpu_seconds``, ``steps``.
    """
    if dataset.proposals is None:
        raise ValueError("the dataset has no recorded proposals (collected before they were kept?)")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    if network is None:
        network = ReferencePolicyConfig(
            dataset.observation_dims, magnitude_levels=magnitude_levels(dataset)
        )
    net = ReferencePolicy(network, seed=config.seed)
    observations = {k: v.float() for k, v in dataset.observations.items()}
    net.set_input_statistics(observations)
    targets = proposal_targets(dataset.proposals.float(), network.magnitude_levels)
    grounding = entity_labels(net, dataset)

    def loss_of(index: torch.Tensor) -> torch.Tensor:
        standardized = net.flatten({k: v[index] for k, v in observations.items()})
        loss = proposal_loss(net.heads(standardized), targets.select(index))
        if grounding is not None:
            loss = loss + net.grounding_loss(standardized, grounding[index])
        return loss

    history = train_within_budget(
        net, loss_of, len(dataset), config, desc="reference cloning", progress=progress
    )
    return net, history


@torch.no_grad()
def proposal_accuracy(net: ReferencePolicy, dataset: NoiseDataset) -> dict[str, float]:
    """Agreement with the recorded proposals: defer decisions, gripper commands (where the
    reasoner acted), all three axis signs and the magnitude within 0.05 (where it moved)."""
    if dataset.proposals is None or len(dataset) == 0:
        raise ValueError("the dataset has no recorded proposals")
    logits = net({k: v.float() for k, v in dataset.observations.items()})
    targets = proposal_targets(dataset.proposals.float())
    defer, gripper, _ = logits.decisions()
    acted = targets.defer == 0
    result = {"defer": float((defer.float() == targets.defer).float().mean())}
    if acted.any():
        result["gripper"] = float((gripper[acted] == targets.gripper[acted]).float().mean())
    if targets.moves.any():
        axes = logits.axes[targets.moves].argmax(-1) == targets.axes[targets.moves]
        result["axes"] = float(axes.all(-1).float().mean())
        magnitude = logits.magnitude[targets.moves] - targets.magnitude[targets.moves]
        result["magnitude"] = float((magnitude.abs() <= 0.05).float().mean())
    return result


def save_reference_policy(net: ReferencePolicy, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (same layout as flow-policy checkpoints)."""
    return write_checkpoint(directory, FORMAT, net.config.to_dict(), net.state_dict())


def load_reference_policy(directory: str | Path, *, device: str = "cpu") -> ReferencePolicy:
    """Rebuild a reference policy saved by :func:`save_reference_policy`, in eval mode."""
    build = functools.partial(ReferencePolicy, seed=None)
    return load_model(directory, FORMAT, ReferencePolicyConfig.from_dict, build, device=device)


def load_checked_reference_policy(
    path: str | Path, policy: Any, device: str = "cpu"
) -> ReferencePolicy:
    """The reference policy at ``path``, checked against the flow policy's inputs."""
    net = load_reference_policy(path, device=device)
    check_reads_policy_observation("reference policy", str(path), net, policy)
    return net
