"""What the small learned policies share: their input layer, trunk and training loop.

Noise policies (DSBC, DSRL) and reference policies read the same flow-policy observation (a dict
of tensors, e.g. ``state`` and ``instruction``), flattened in a fixed key order and standardized
with statistics stored as buffers, so a checkpoint carries its own normalization. They are
trained the same way: seeded minibatches, AdamW with a cosine schedule, inside a CPU budget.

An optional entity read-out (:class:`EntityLayout`) adds what a plain MLP finds hard to compute:
which object and which target the instruction names, and their positions relative to the end
effector and to each other. The read-out's choice is a learned classifier over the flat input,
taught by :func:`grounding_labels` (which object the recorded episodes moved, where it ended).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from frs_steering.checkpoint import CheckpointError
from frs_steering.integrate import action_to_noise
from frs_steering.train import check_training_options, flushing_denormals

#: Floats an entity read-out adds to the trunk's input: object - anchor, target - anchor,
#: target - object (xyz each).
ENTITY_FEATURES = 9


@dataclass(frozen=True)
class EntityLayout:
    """Where a scene's points sit in one observation key (xyz in metres, consecutive): the end
    effector (``anchor``), the objects an instruction may name and the targets it may name,
    each as (offset of the first point's x, count)."""

    anchor: int
    objects: tuple[int, int]
    targets: tuple[int, int]
    key: str = "state"
    scale: float = 10.0  # metres -> network input (10 cm -> 1.0)

    def __post_init__(self) -> None:
        for name in ("objects", "targets"):
            offset, count = (int(v) for v in getattr(self, name))
            if offset < 0 or count < 1:
                raise ValueError(f"EntityLayout.{name} needs offset >= 0 and count >= 1")
            object.__setattr__(self, name, (offset, count))
        if self.anchor < 0 or not self.scale > 0:
            raise ValueError("EntityLayout needs anchor >= 0 and scale > 0")

    def width(self) -> int:
        """The smallest width of ``key`` that holds every point."""
        ends = [self.anchor + 3] + [o + 3 * c for o, c in (self.objects, self.targets)]
        return max(ends)

    def check_fits(self, observation_dims: Mapping[str, int]) -> None:
        """ValueError unless ``observation_dims`` holds every point of the layout."""
        width = observation_dims.get(self.key)
        if width is None or width < self.width():
            raise ValueError(
                f"the entity layout reads {self.width()} floats of {self.key!r}; "
                f"the observation has {width}"
            )

    def points(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, width]`` -> anchor ``[B, 3]``, objects ``[B, n, 3]``, targets ``[B, m, 3]``."""
        anchor = values[:, self.anchor : self.anchor + 3]
        groups = []
        for offset, count in (self.objects, self.targets):
            groups.append(values[:, offset : offset + 3 * count].reshape(-1, count, 3))
        return anchor, groups[0], groups[1]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["objects"], data["targets"] = list(self.objects), list(self.targets)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> EntityLayout | None:
        """The layout a checkpoint's config stores (None: no read-out)."""
        if data is None or isinstance(data, EntityLayout):
            return data
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown EntityLayout fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class EntityReadout(nn.Module):
    """Picks the named object and target (softmax over each group, from the standardized flat
    input) and returns their positions relative to the anchor and to each other, scaled."""

    def __init__(self, layout: EntityLayout, input_width: int) -> None:
        super().__init__()
        self.layout = layout
        self.select = nn.Linear(input_width, layout.objects[1] + layout.targets[1])

    def logits(self, standardized: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Object and target choice logits, ``[B, n]`` and ``[B, m]``."""
        return self.select(standardized).split([self.layout.objects[1], self.layout.targets[1]], 1)

    def forward(self, standardized: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``[B, ENTITY_FEATURES]`` from the standardized input and the raw layout key."""
        anchor, objects, targets = self.layout.points(values)
        object_logits, target_logits = self.logits(standardized)
        obj = (object_logits.softmax(1).unsqueeze(2) * objects).sum(1)
        target = (target_logits.softmax(1).unsqueeze(2) * targets).sum(1)
        relative = torch.cat([obj - anchor, target - anchor, target - obj], 1)
        return self.layout.scale * relative


class ObservationMlp(nn.Module):
    """Flattens ``observation_dims``' keys in order, standardizes them (buffers
    ``input_mean`` / ``input_std``, identity until statistics are set) and runs an MLP
    ``trunk`` of ``depth`` x ``hidden`` (:meth:`encode`, with the entity read-out's features
    when ``entities`` is given); subclasses add their heads on ``hidden`` features."""

    def __init__(
        self,
        observation_dims: Mapping[str, int],
        hidden: int,
        depth: int,
        seed: int | None,
        entities: EntityLayout | None = None,
    ) -> None:
        if seed is not None:
            torch.manual_seed(seed)
        super().__init__()
        self.observation_dims = dict(observation_dims)
        total = sum(self.observation_dims.values())
        self.register_buffer("input_mean", torch.zeros(total))
        self.register_buffer("input_std", torch.ones(total))
        self.entity_readout = None
        if entities is not None:
            entities.check_fits(self.observation_dims)
            width = self.observation_dims[entities.key]
            self.entity_readout = EntityReadout(entities, total)
            keys = list(self.observation_dims)
            start = sum(self.observation_dims[k] for k in keys[: keys.index(entities.key)])
            self._entity_slice = slice(start, start + width)
        extra = 0 if entities is None else ENTITY_FEATURES
        layers: list[nn.Module] = []
        for width in (total + extra, *[hidden] * (depth - 1)):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
        self.trunk = nn.Sequential(*layers)

    def encode(self, standardized: torch.Tensor) -> torch.Tensor:
        """Hidden features ``[B, hidden]`` of standardized flat inputs."""
        if self.entity_readout is None:
            return self.trunk(standardized)
        cut = self._entity_slice
        values = standardized[:, cut] * self.input_std[cut] + self.input_mean[cut]
        entities = self.entity_readout(standardized, values)
        return self.trunk(torch.cat([standardized, entities], 1))

    def grounding_loss(self, standardized: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the read-out's choices against ``[B, 2]`` (object, target) labels;
        -1 (unknown) is ignored. Zero without a read-out or a known label."""
        if self.entity_readout is None:
            return standardized.new_zeros(())
        loss = standardized.new_zeros(())
        for logits, label in zip(self.entity_readout.logits(standardized), labels.T, strict=True):
            known = label >= 0
            if known.any():
                loss = loss + nn.functional.cross_entropy(logits[known], label[known])
        return loss

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


def grounding_labels(
    observations: Mapping[str, torch.Tensor],
    episode: torch.Tensor,
    success: torch.Tensor,
    layout: EntityLayout,
    min_travel: float = 0.02,
    max_target_distance: float = 0.1,
) -> torch.Tensor:
    """``[N, 2]`` (object, target) per sample: in each successful episode, the object that
    travelled farthest between its first and last sample (at least ``min_travel`` m) and the
    target nearest to where it ended (within ``max_target_distance`` m); -1 where an episode
    failed, nothing moved or the object ended on no target (a lift). What the
    recorded episodes show the instruction meant, so the read-out learns it from the data."""
    values = observations[layout.key].reshape(len(episode), -1).float()
    _, objects, targets = layout.points(values)
    labels = torch.full((len(episode), 2), -1, dtype=torch.long)
    for name in episode.unique().tolist():
        rows = torch.nonzero(episode == name).flatten()
        if not bool(success[rows[0]]):
            continue
        first, last = rows.min(), rows.max()
        travel = (objects[last, :, :2] - objects[first, :, :2]).norm(dim=1)
        if float(travel.max()) < min_travel:
            continue
        moved = int(travel.argmax())
        distance = (targets[last, :, :2] - objects[last, moved, :2]).norm(dim=1)
        ended = int(distance.argmin()) if float(distance.min()) <= max_target_distance else -1
        labels[rows] = torch.tensor([moved, ended])
    return labels


def entity_labels(net: ObservationMlp, dataset: Any) -> torch.Tensor | None:
    """:func:`grounding_labels` of a :class:`~frs_steering.learning.noise_data.NoiseDataset`
    for a network with an entity read-out (None without one)."""
    if net.entity_readout is None:
        return None
    layout = net.entity_readout.layout
    return grounding_labels(dataset.observations, dataset.episode, dataset.success, layout)


#: Inputs a learned policy may read beyond the flow policy's observation, computed by the caller
#: from the flow policy and the steering request (:func:`derived_inputs`): the flow policy's
#: observation embedding, the first row of the commanded reference with its mask, and the
#: reference's one-step reversal.
POLICY_EMBEDDING = "policy_embedding"
REFERENCE_ROW = "reference_row"
REFERENCE_REVERSAL = "reference_reversal"
#: Bound on the one-step reversal as an input: the study's references land within 6.4 of zero;
#: a reference the flow cannot reverse finitely (1e20) must not turn the network's output NaN.
REFERENCE_REVERSAL_LIMIT = 100.0


def derived_input_widths(policy: Any) -> dict[str, int]:
    """Width of each derived input for ``policy`` (no embedding for a policy that exposes none)."""
    horizon, dim = policy.spec.chunk_shape
    widths = {REFERENCE_ROW: 2 * dim, REFERENCE_REVERSAL: horizon * dim}
    if callable(getattr(policy, "observation_embedding", None)):
        widths[POLICY_EMBEDDING] = int(policy.config.width)
    return widths


def reference_row(reference: torch.Tensor, commanded: torch.Tensor) -> torch.Tensor:
    """``[B, 2 * dim]``: the first row of a normalized ``[B, horizon, dim]`` reference (every
    element: FRS reverses the whole chunk, so uncommanded values such as a kept gripper's shape
    the noise too), then which of them are commanded (references here repeat one row)."""
    return torch.cat([reference[:, 0], commanded[:, 0].to(reference.dtype)], dim=1)


def reference_reversal(policy: Any, cache: Any, reference: torch.Tensor) -> torch.Tensor:
    """``[B, horizon * dim]``: where one Euler step back from the normalized ``[B, horizon,
    dim]`` reference lands, at the noise end of the flow (one velocity call, ``cache`` being
    ``policy.encode`` of the observation), finite and within :data:`REFERENCE_REVERSAL_LIMIT`.
    A coarse reversal that carries how this flow bends at this reference; a learned reversal
    reading it only has to correct it."""
    with torch.no_grad():
        noise = action_to_noise(
            lambda x, t: policy.velocity(x, t, cache),
            reference,
            policy.spec.convention,
            1,
            time_grid=policy.spec.time_grid,
        )
    limit = REFERENCE_REVERSAL_LIMIT
    return noise.flatten(1).float().nan_to_num(0.0, limit, -limit).clamp(-limit, limit)


def policy_embedding(policy: Any, observation: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``[B, width]``: the flow policy's observation embedding, as a fixed input (no gradient)."""
    with torch.no_grad():
        return policy.observation_embedding(observation).float()


def reads_reference(observation_dims: Mapping[str, int]) -> bool:
    """Whether a network of ``observation_dims`` reads the commanded reference (a learned
    reversal's inputs), which a policy acting without one cannot give it."""
    return bool({REFERENCE_ROW, REFERENCE_REVERSAL} & set(observation_dims))


def derived_inputs(
    observation_dims: Mapping[str, int],
    policy: Any,
    observation: Mapping[str, torch.Tensor],
    reference: torch.Tensor | None = None,
    commanded: torch.Tensor | None = None,
    cache: Any = None,
) -> dict[str, torch.Tensor]:
    """The derived inputs (:data:`POLICY_EMBEDDING`, :data:`REFERENCE_ROW`,
    :data:`REFERENCE_REVERSAL`) that a network of ``observation_dims`` reads, for
    ``observation`` steered toward ``reference`` (``cache``: the policy's encoding of
    ``observation``, encoded here when None and needed)."""
    extra: dict[str, torch.Tensor] = {}
    if POLICY_EMBEDDING in observation_dims:
        extra[POLICY_EMBEDDING] = policy_embedding(policy, observation)
    if reads_reference(observation_dims) and (reference is None or commanded is None):
        raise ValueError("this network reads the commanded reference: steer it toward one")
    if REFERENCE_ROW in observation_dims:
        extra[REFERENCE_ROW] = reference_row(reference.float(), commanded)
    if REFERENCE_REVERSAL in observation_dims:
        if cache is None:
            with torch.no_grad():
                cache = policy.encode(observation)
        extra[REFERENCE_REVERSAL] = reference_reversal(policy, cache, reference)
    return extra


def check_reads_policy_observation(kind: str, path: str, net: ObservationMlp, policy: Any) -> None:
    """CheckpointError unless ``net`` reads only the flow policy's observation keys (at their
    widths) and derived inputs it can compute: a learned policy trained beside another flow
    policy would fail at its first call otherwise."""
    config = policy.config
    observed = {"state": config.state_dim}
    if config.instruction_dim:
        observed["instruction"] = config.instruction_dim
    derived = derived_input_widths(policy)
    reads = dict(net.observation_dims)
    if "state" not in reads or any((observed | derived).get(k) != v for k, v in reads.items()):
        raise CheckpointError(
            f"{kind} {path} reads {reads}; the flow policy observes {observed} "
            f"(derived inputs: {derived})"
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

    Where the CPU budget runs ahead of the steps (a slower host, a busy one), the schedule
    follows the budget instead, so a training the budget ends still ends annealed rather than
    cut at a high learning rate.

    Leaves ``net`` in eval mode; returns the history: per-step ``loss`` and
    ``learning_rate``, ``cpu_seconds``, ``steps`` run, ``budget_paced_from`` (the step from
    which the budget paced the schedule, None where the steps did). Seeded: the same data and
    settings give the same weights wherever the steps pace the schedule.
    """
    generator = torch.Generator().manual_seed(budget.seed)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=budget.learning_rate, weight_decay=budget.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, budget.steps)
    losses: list[float] = []
    rates: list[float] = []
    paced_from: int | None = None
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
            losses.append(loss.item())
            rates.append(optimizer.param_groups[0]["lr"])
            spent = time.process_time() - start
            if spent > budget.max_seconds:
                break
            time_share = spent / budget.max_seconds if budget.max_seconds > 0 else 1.0
            step_share = len(losses) / budget.steps
            settled = max(time_share, step_share) >= 0.05  # the first steps' pace is not the run's
            if paced_from is None and settled and time_share > step_share:
                paced_from = len(losses)
            if paced_from is None:
                scheduler.step()
            else:  # the budget ends this training: anneal by its share spent, not the steps'
                share = max(time_share, step_share)
                for group in optimizer.param_groups:
                    group["lr"] = budget.learning_rate * 0.5 * (1.0 + math.cos(math.pi * share))
            if progress and len(losses) % 50 == 0:
                bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
    net.eval()
    return {
        "loss": losses,
        "cpu_seconds": time.process_time() - start,
        "steps": len(losses),
        "learning_rate": rates,
        "budget_paced_from": paced_from,
    }
