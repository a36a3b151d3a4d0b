"""Noise policies: small networks obs -> noise that drive a frozen flow policy (DSBC, DSRL).

A noise policy replaces the reasoner: it predicts the noise a flow policy should start from,
and the flow policy's ordinary forward pass turns it into the action chunk. DSBC clones it from
the noises FRS found (:func:`train_dsbc`); DSRL trains it with SAC as the actor over the flow
policy's noise space (:mod:`frs_steering.learning.noise_sac`).

The output is one bounded vector per chunk (``bound * tanh``), shared by every row of the
chunk (``target = "chunk_mean"``: the training target is the noise averaged over the rows),
or a full ``[horizon, dim]`` noise (``target = "full"``). Registered as the ``noise_policy``
steering method: ``steer(policy, ..., method="noise_policy", params={"noise_policy": net},
observation=obs)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frs_steering.checkpoint import CheckpointError, load_model, write_checkpoint
from frs_steering.learning.noise_data import NoiseDataset
from frs_steering.learning.observation_input import (
    POLICY_EMBEDDING,
    REFERENCE_REVERSAL,
    REFERENCE_ROW,
    EntityLayout,
    ObservationMlp,
    TrainingBudget,
    check_reads_policy_observation,
    derived_inputs,
    entity_labels,
    policy_embedding,
    reference_reversal,
    reference_row,
    train_within_budget,
)
from frs_steering.steer import MethodOutput, SteeringContext, register_method

#: On-disk format id of noise-policy checkpoints: a stable name, not the module path (the module
#: moved under ``learning``; checkpoints written before the move must still load).
FORMAT = "frs_steering.noise_policy"
TARGETS = ("chunk_mean", "full")
OBJECTIVES = ("mse", "nll", "mixture")
#: Share of a mixture's training signal that also reaches the components that did not win a
#: sample, so none of them is left untrained.
MIXTURE_SHARE_OF_LOSERS = 0.05
LOG_STD_RANGE = (-5.0, 1.0)


@dataclass(frozen=True)
class NoisePolicyConfig:
    """Architecture of a :class:`NoisePolicy` (saved with its checkpoint)."""

    observation_dims: Mapping[str, int]  # observation key -> flattened width
    horizon: int
    dim: int
    target: str = "chunk_mean"
    hidden: int = 256
    depth: int = 2
    bound: float = 5.0
    noise_dims: tuple[int, ...] | None = None  # action dims predicted (None: all); rest fresh
    defer_head: bool = False  # also predict whether steering acted (else: fresh noise, as FRS)
    # Candidate noises per observation and a classifier among them (DSBC objective "mixture"):
    # the output is the likeliest candidate, so noises that steer to different modes are not
    # averaged into one that steers to none. 1: a single regression.
    components: int = 1
    # which object and target the instruction names, read out of the state (None: plain MLP)
    entities: EntityLayout | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "entities", EntityLayout.from_dict(self.entities))
        if self.entities is not None:
            self.entities.check_fits(self.observation_dims)
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if not self.observation_dims:
            raise ValueError("observation_dims is empty")
        for name in ("horizon", "dim", "hidden", "depth", "components"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"NoisePolicyConfig.{name} must be a positive int, got {value!r}")
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"bound must be positive, got {self.bound}")
        if self.noise_dims is not None:
            dims = tuple(int(d) for d in self.noise_dims)
            if not dims or len(set(dims)) != len(dims) or not all(0 <= d < self.dim for d in dims):
                raise ValueError(f"noise_dims must be distinct dims in [0, {self.dim}), got {dims}")
            object.__setattr__(self, "noise_dims", dims)

    @property
    def predicted_dims(self) -> list[int]:
        return list(range(self.dim)) if self.noise_dims is None else list(self.noise_dims)

    @property
    def output_dim(self) -> int:
        rows = 1 if self.target == "chunk_mean" else self.horizon
        return rows * len(self.predicted_dims)

    def compose(self, vector: torch.Tensor, fresh: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, output_dim]`` -> ``[B, horizon, dim]``: the predicted dims (one row repeated
        for chunk_mean), ``fresh`` (default zeros) in the dims the policy does not predict."""
        dims = self.predicted_dims
        batch = vector.shape[0]
        if self.target == "chunk_mean":
            part = vector.unsqueeze(1).expand(batch, self.horizon, len(dims))
        else:
            part = vector.reshape(batch, self.horizon, len(dims))
        if fresh is None:
            fresh = vector.new_zeros(batch, self.horizon, self.dim)
        noise = fresh.clone()
        noise[..., dims] = part.to(noise.dtype)
        return noise

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["observation_dims"] = dict(self.observation_dims)
        data["noise_dims"] = None if self.noise_dims is None else list(self.noise_dims)
        data["entities"] = None if self.entities is None else self.entities.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoisePolicyConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown NoisePolicyConfig fields {sorted(unknown)}")
        return cls(**data)


class NoisePolicy(ObservationMlp):
    """Standardized observation -> MLP -> Gaussian over the pre-squash noise.

    ``forward`` gives the deterministic noise ``bound * tanh(mean)`` as ``[B, horizon, dim]``;
    :meth:`distribution` gives mean and log-std (used by the NLL objective and by SAC).
    """

    def __init__(self, config: NoisePolicyConfig, seed: int | None = 0) -> None:
        super().__init__(
            config.observation_dims, config.hidden, config.depth, seed, config.entities
        )
        self.config = config
        self.mean_head = nn.Linear(config.hidden, config.output_dim * config.components)
        self.log_std_head = nn.Linear(config.hidden, config.output_dim)
        self.defer_head = nn.Linear(config.hidden, 1) if config.defer_head else None
        multiple = config.components > 1
        self.component_head = nn.Linear(config.hidden, config.components) if multiple else None

    def candidates(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pre-squash candidate means ``[B, components, output_dim]`` and their logits
        ``[B, components]`` (None for a single regression) from trunk features."""
        means = self.mean_head(hidden).view(-1, self.config.components, self.config.output_dim)
        logits = None if self.component_head is None else self.component_head(hidden)
        return means, logits

    def head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-squash mean (the likeliest candidate's) and clamped log-std from standardized
        features."""
        return self.outputs(self.encode(features))

    def outputs(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`head` from trunk features."""
        means, logits = self.candidates(hidden)
        if logits is None:
            mean = means[:, 0]
        else:
            mean = means[torch.arange(means.shape[0]), logits.argmax(1)]
        return mean, self.log_std_head(hidden).clamp(*LOG_STD_RANGE)

    def distribution(
        self, observations: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-squash mean and clamped log-std, each ``[B, output_dim]``."""
        return self.head(self.flatten(observations))

    def squash(self, pre: torch.Tensor) -> torch.Tensor:
        """Bounded output vector from a pre-squash vector."""
        return self.config.bound * torch.tanh(pre)

    def forward(
        self, observations: Mapping[str, torch.Tensor], fresh: torch.Tensor | None = None
    ) -> torch.Tensor:
        mean, _ = self.distribution(observations)
        return self.config.compose(self.squash(mean), fresh)

    def defer_logit(self, observations: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """``[B]`` logit that the reasoner would defer here (None without a defer head)."""
        if self.defer_head is None:
            return None
        return self.defer_head(self.encode(self.flatten(observations)))[:, 0]

    def target_of(self, noise: torch.Tensor) -> torch.Tensor:
        """The regression target for ``[N, horizon, dim]`` noises, clipped inside the bound."""
        part = noise[..., self.config.predicted_dims]
        vector = part.mean(1) if self.config.target == "chunk_mean" else part.flatten(1)
        limit = self.config.bound * (1.0 - 1e-3)
        return vector.clamp(-limit, limit)


def noise_policy_method(
    ctx: SteeringContext, *, noise_policy: NoisePolicy, noise_scale: float = 0.0
) -> MethodOutput:
    """Generate from the noise a noise policy predicts for the observation (no reference).

    ``noise_scale`` adds that much fresh N(0, I) noise (exploration); dims the noise policy
    does not predict, and padding, take fresh noise, as unsteered dims do in FRS; so does the
    whole chunk where a defer head predicts the reasoner would have deferred.
    """
    if ctx.observation is None:
        raise ValueError("the noise_policy method needs the observation, not only a cache")
    if not isinstance(noise_policy, NoisePolicy):
        raise ValueError(f"noise_policy must be a NoisePolicy, got {type(noise_policy).__name__}")
    made = (noise_policy.config.horizon, noise_policy.config.dim)
    if made != tuple(ctx.spec.chunk_shape):
        raise ValueError(
            f"noise policy makes {made[0]}x{made[1]} noise; the flow policy needs "
            f"{tuple(ctx.spec.chunk_shape)}"
        )
    fresh = ctx.noise()
    with ctx.timed("noise_policy"):
        extra = derived_inputs(noise_policy.config.observation_dims, ctx.policy, ctx.observation)
        predicted = noise_policy({**ctx.observation, **extra}).to(fresh.dtype)
    dims = torch.zeros(ctx.spec.dim, dtype=torch.bool, device=fresh.device)
    dims[noise_policy.config.predicted_dims] = True
    use = (ctx.spec.steerable_mask(fresh.device) & dims).expand_as(fresh)
    logit = noise_policy.defer_logit(ctx.observation)
    if logit is not None:  # a predicted deferral leaves the policy to act on its own
        use = use & (logit <= 0).to(fresh.device).view(-1, 1, 1)
    noise = torch.where(use, predicted + noise_scale * fresh, fresh)
    chunk = ctx.generate(noise)
    base = ctx.generate(fresh) if ctx.include_base_sample else None
    return MethodOutput(chunk=chunk, noise=noise, base_chunk=base)


register_method("noise_policy", noise_policy_method)


def learned_reversal_method(ctx: SteeringContext, *, reversal: NoisePolicy) -> MethodOutput:
    """FRS with a learned reversal: a noise policy that reads the commanded reference
    (:data:`REFERENCE_ROW`) predicts the noise FRS's reversal would find, in one network call
    instead of ``K`` reverse velocity calls (one, where it reads the reference's one-step
    reversal, :data:`REFERENCE_REVERSAL`); the flow's forward pass then runs as in FRS.

    Predicted elements that are commanded take the prediction, the rest fresh noise.
    """
    if ctx.observation is None:
        raise ValueError("the learned_reversal method needs the observation, not only a cache")
    reads = reversal.config.observation_dims if isinstance(reversal, NoisePolicy) else {}
    if REFERENCE_ROW not in reads:
        raise ValueError("reversal must be a NoisePolicy that reads the reference row")
    if (reversal.config.horizon, reversal.config.dim) != tuple(ctx.spec.chunk_shape):
        raise ValueError("the learned reversal makes another chunk shape than the flow policy")
    fresh = ctx.noise()
    cache = ctx.cache() if REFERENCE_REVERSAL in reads else None
    with ctx.timed("learned_reversal"):
        extra = derived_inputs(
            reads, ctx.policy, ctx.observation, ctx.reference, ctx.steered, cache=cache
        )
        predicted = reversal({**ctx.observation, **extra}).to(fresh.dtype)
    ctx.nfe += int(REFERENCE_REVERSAL in reads)  # the one-step reversal's velocity call
    dims = torch.zeros(ctx.spec.dim, dtype=torch.bool, device=fresh.device)
    dims[reversal.config.predicted_dims] = True
    noise = torch.where(ctx.steered & dims, predicted, fresh)
    if not ctx.include_base_sample:
        return MethodOutput(chunk=ctx.generate(noise), noise=noise)
    both = ctx.generate(torch.stack((noise, fresh), dim=1))  # one pass for both, as FRS
    return MethodOutput(chunk=both[:, 0], noise=noise, base_chunk=both[:, 1])


register_method("learned_reversal", learned_reversal_method)


# ------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class DsbcConfig(TrainingBudget):
    """Behaviour cloning of noises (DSBC): objective, and the optimizer and CPU budget."""

    objective: str = "mse"
    steered_only: bool = False  # fit only elements that came from steering (skip fresh draws)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")


def dsbc_loss(
    net: NoisePolicy,
    hidden: torch.Tensor,
    target: torch.Tensor,
    objective: str,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE of the bounded output, Gaussian NLL with the predicted std around it, or the
    mixture loss (:func:`mixture_loss`), from trunk features ``hidden`` (:meth:`NoisePolicy.
    encode`), averaged with ``weights`` (same shape as ``target``; None = uniform)."""
    if objective == "mixture":
        return mixture_loss(net, hidden, target, weights)
    mean, log_std = net.outputs(hidden)
    output = net.squash(mean)
    if objective == "mse":
        per_element = (output - target).pow(2)
    else:
        per_element = 0.5 * ((target - output) / log_std.exp()).pow(2) + log_std
    if weights is None:
        return per_element.mean()
    return (per_element * weights).sum() / weights.sum().clamp_min(1.0)


def check_objective(objective: str, components: int) -> None:
    """ValueError unless ``objective`` fits a noise policy of ``components`` candidates: the
    mixture objective and more than one candidate go together."""
    if components < 1 or (components > 1) != (objective == "mixture"):
        raise ValueError(
            f"objective {objective!r} with {components} components: the mixture objective and "
            "components > 1 go together (--objective mixture needs --components > 1)"
        )


def mixture_loss(
    net: NoisePolicy,
    hidden: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Winner-takes-most regression plus classification: each sample trains the candidate
    nearest its target (the others with :data:`MIXTURE_SHARE_OF_LOSERS` of the weight), and
    the component logits learn which candidate that was."""
    means, logits = net.candidates(hidden)
    if logits is None:
        raise ValueError("the mixture objective needs a noise policy with components > 1")
    weights = torch.ones_like(target) if weights is None else weights
    error = ((net.squash(means) - target.unsqueeze(1)).pow(2) * weights.unsqueeze(1)).sum(-1)
    nearest = error.argmin(1)
    components = net.config.components
    share = torch.full_like(error, MIXTURE_SHARE_OF_LOSERS / (components - 1))
    share.scatter_(1, nearest.unsqueeze(1), 1.0 - MIXTURE_SHARE_OF_LOSERS)
    regression = (share * error).sum() / weights.sum().clamp_min(1.0)
    informative = weights.sum(1) > 0  # a fully deferred chunk names no winner
    if not informative.any():
        return regression
    classification = nn.functional.cross_entropy(logits[informative], nearest[informative])
    return regression + classification


def defer_loss(net: NoisePolicy, hidden: torch.Tensor, steered: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the defer head (on trunk features ``hidden``) against 'no
    element was steered'."""
    logit = net.defer_head(hidden)[:, 0]
    deferred = (~steered.flatten(1).any(1)).float()
    return nn.functional.binary_cross_entropy_with_logits(logit, deferred)


def default_config(dataset: NoiseDataset, **overrides: Any) -> NoisePolicyConfig:
    """A config for ``dataset``: its observation widths and chunk shape, predicting the action
    dims that steering acted on in it (all dims if none did, e.g. reversed demonstrations)."""
    horizon, dim = dataset.chunk_shape
    steered_dims = torch.nonzero(dataset.steered.any(dim=(0, 1))).flatten().tolist()
    fields: dict[str, Any] = {
        "observation_dims": dataset.observation_dims,
        "horizon": horizon,
        "dim": dim,
        "noise_dims": tuple(steered_dims) if steered_dims else None,
    }
    return NoisePolicyConfig(**(fields | overrides))


def train_dsbc(
    dataset: NoiseDataset,
    noise_policy_config: NoisePolicyConfig | None = None,
    config: DsbcConfig = DsbcConfig(),
    *,
    progress: bool = True,
) -> tuple[NoisePolicy, dict[str, Any]]:
    """Fit a noise policy to ``dataset`` (use only the samples you want cloned, e.g. successes).

    Returns the policy (eval mode) and a history: per-step ``loss``, ``seconds`` (CPU wall),
    ``steps`` run. Seeded: the same data and config give the same weights.
    """
    if len(dataset) == 0:
        raise ValueError("the noise dataset is empty")
    if noise_policy_config is None:
        noise_policy_config = default_config(dataset)
    check_objective(config.objective, noise_policy_config.components)
    net = NoisePolicy(noise_policy_config, seed=config.seed)
    observations = {k: v.float() for k, v in dataset.observations.items()}
    net.set_input_statistics(observations)
    target = net.target_of(dataset.noise.float())
    steered_only = config.steered_only or net.config.defer_head  # deferrals: the head's job
    weights = net.target_of(dataset.steered.float()) if steered_only else None
    grounding = entity_labels(net, dataset)

    def loss_of(index: torch.Tensor) -> torch.Tensor:
        standardized = net.flatten({k: v[index] for k, v in observations.items()})
        hidden = net.encode(standardized)
        weight = None if weights is None else weights[index]
        loss = dsbc_loss(net, hidden, target[index], config.objective, weight)
        if net.defer_head is not None:
            loss = loss + defer_loss(net, hidden, dataset.steered[index])
        if grounding is not None:
            loss = loss + net.grounding_loss(standardized, grounding[index])
        return loss

    history = train_within_budget(
        net, loss_of, len(dataset), config, desc="DSBC", progress=progress
    )
    return net, history


def reversal_dataset(
    dataset: NoiseDataset,
    policy: Any,
    references: torch.Tensor,
    commanded: torch.Tensor,
    *,
    one_step_reversal: bool = False,
    batch_size: int = 1024,
) -> NoiseDataset:
    """``dataset`` as a learned reversal reads it: the state, the flow policy's observation
    embedding (which carries the instruction) and each chunk's commanded reference row
    (``references`` / ``commanded``: the ``[N, horizon, dim]`` normalized references it was
    steered toward and their masks), with ``one_step_reversal`` also the references' one-step
    reversals (:data:`REFERENCE_REVERSAL`, one velocity call per chunk, in batches of
    ``batch_size``)."""
    observations = {k: v.float() for k, v in dataset.observations.items()}
    inputs = {
        "state": observations["state"],
        POLICY_EMBEDDING: policy_embedding(policy, observations),
        REFERENCE_ROW: reference_row(references.float(), commanded),
    }
    if one_step_reversal:
        parts = []
        for start in range(0, len(dataset), batch_size):
            part = {k: v[start : start + batch_size] for k, v in observations.items()}
            with torch.no_grad():
                cache = policy.encode(part)
            chunk = references[start : start + batch_size].float()
            parts.append(reference_reversal(policy, cache, chunk))
        inputs[REFERENCE_REVERSAL] = torch.cat(parts)
    return replace(dataset, observations=inputs)


# ------------------------------------------------------------------------------ checkpoints


def save_noise_policy(net: NoisePolicy, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (same layout as flow-policy checkpoints)."""
    return write_checkpoint(directory, FORMAT, net.config.to_dict(), net.state_dict())


def load_noise_policy(directory: str | Path, *, device: str = "cpu") -> NoisePolicy:
    """Rebuild a noise policy saved by :func:`save_noise_policy`, in eval mode."""
    build = functools.partial(NoisePolicy, seed=None)
    return load_model(directory, FORMAT, NoisePolicyConfig.from_dict, build, device=device)


def load_checked_noise_policy(path: str | Path, policy: Any, device: str = "cpu") -> NoisePolicy:
    """The noise policy at ``path``, checked against the flow policy's inputs and chunk shape."""
    net = load_noise_policy(path, device=device)
    check_reads_policy_observation("noise policy", str(path), net, policy)
    if (net.config.horizon, net.config.dim) != tuple(policy.spec.chunk_shape):
        raise CheckpointError(
            f"noise policy {path} makes {net.config.horizon}x{net.config.dim} noise; the flow "
            f"policy needs {tuple(policy.spec.chunk_shape)}"
        )
    return net
