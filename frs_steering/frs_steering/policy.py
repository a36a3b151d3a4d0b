"""The flow-policy contract every steering method works against.

A policy (the built-in model, an analytic test flow, or later an openpi / LeRobot adapter) does
three things: encode an observation once into an opaque cache, evaluate the velocity of an action
chunk at a time given that cache, and describe its action space in an :class:`ActionSpec`.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from frs_steering.normalization import IdentityNormalizer, Normalizer, normalizer_from_dict

Observation = Mapping[str, torch.Tensor]
CacheT = TypeVar("CacheT")


class TimeConvention(enum.Enum):
    """Which end of the time axis holds the noise.

    ``NOISE_AT_ZERO`` is the paper's convention (``x_t = t*action + (1-t)*noise``, velocity
    ``action - noise``, sampling t: 0 -> 1). ``NOISE_AT_ONE`` is openpi's / LeRobot's
    (``x_t = t*noise + (1-t)*action``, velocity ``noise - action``, sampling t: 1 -> 0 with
    ``dt = -1/K``).
    """

    NOISE_AT_ZERO = "noise_at_zero"
    NOISE_AT_ONE = "noise_at_one"

    @property
    def noise_time(self) -> float:
        return 0.0 if self is TimeConvention.NOISE_AT_ZERO else 1.0

    @property
    def data_time(self) -> float:
        return 1.0 - self.noise_time

    def time_at_noise_level(self, noise_level: float) -> float:
        """Time whose interpolant holds ``noise_level`` noise (0 = data, 1 = pure noise)."""
        return 1.0 - noise_level if self is TimeConvention.NOISE_AT_ZERO else noise_level

    def noise_level(self, t: torch.Tensor) -> torch.Tensor:
        """Share of noise in the interpolant at time ``t`` (inverse of time_at_noise_level)."""
        return 1.0 - t if self is TimeConvention.NOISE_AT_ZERO else t

    def interpolate(self, noise: torch.Tensor, action: torch.Tensor, t: torch.Tensor | float):
        """Point on the straight noise-action path at time ``t`` (broadcast over the chunk)."""
        level = self.noise_level(torch.as_tensor(t, dtype=noise.dtype, device=noise.device))
        while level.ndim and level.ndim < noise.ndim:
            level = level.unsqueeze(-1)
        return level * noise + (1.0 - level) * action

    def velocity_target(self, noise: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """d x_t / d t along the straight path: the flow-matching regression target."""
        return action - noise if self is TimeConvention.NOISE_AT_ZERO else noise - action


@dataclass(frozen=True)
class ActionSpec:
    """Shape, time convention and normalization of a policy's action chunks.

    ``dim`` is the padded width the network sees (pi0.5 pads to 32); ``real_dims`` lists the
    positions of the robot's actual action dims inside it (default: all). Padding dims are held
    at their normalized zero. ``time_grid`` says how the sampler computes its step times
    (``accumulated``: ``t += dt`` as openpi's JAX code; ``indexed``: ``t = t0 + k*dt`` as
    LeRobot's), so forward passes reproduce the policy's own sampler bit for bit.
    """

    horizon: int
    dim: int
    convention: TimeConvention = TimeConvention.NOISE_AT_ONE
    num_steps: int = 10
    real_dims: tuple[int, ...] | None = None
    normalizer: Normalizer = field(default_factory=IdentityNormalizer)
    time_grid: str = "accumulated"

    def __post_init__(self) -> None:
        from frs_steering.integrate import check_time_grid  # integrate imports this module

        check_time_grid(self.time_grid)
        for name in ("horizon", "dim", "num_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ActionSpec.{name} must be a positive int, got {value!r}")
        if not isinstance(self.convention, TimeConvention):
            object.__setattr__(self, "convention", TimeConvention(self.convention))
        real = tuple(range(self.dim)) if self.real_dims is None else tuple(self.real_dims)
        if not real or any(not 0 <= i < self.dim for i in real) or len(set(real)) != len(real):
            raise ValueError(f"real_dims must be distinct indices in [0, {self.dim}), got {real}")
        object.__setattr__(self, "real_dims", tuple(sorted(int(i) for i in real)))
        norm_dim = self.normalizer.dim
        if norm_dim is not None and norm_dim != len(self.real_dims):
            raise ValueError(
                f"normalizer covers {norm_dim} dims but the spec has "
                f"{len(self.real_dims)} real dims"
            )

    @property
    def num_real(self) -> int:
        return len(self.real_dims)  # type: ignore[arg-type]

    @property
    def chunk_shape(self) -> tuple[int, int]:
        return (self.horizon, self.dim)

    @property
    def has_padding(self) -> bool:
        return self.num_real != self.dim

    @functools.cached_property
    def _tensor_cache(self) -> dict[tuple[str, torch.device], torch.Tensor]:
        return {}

    def _cached(self, name: str, device: torch.device) -> torch.Tensor:
        """Real-dim index / mask tensors, built once per device (read-only by convention)."""
        key = (name, device)
        if key not in self._tensor_cache:
            with torch.inference_mode(False):
                index = torch.tensor(self.real_dims, dtype=torch.long, device=device)
                if name == "mask":
                    mask = torch.zeros(self.dim, dtype=torch.bool, device=device)
                    self._tensor_cache[key] = mask.index_fill_(0, index, True)
                else:
                    self._tensor_cache[key] = index
        return self._tensor_cache[key]

    def real_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool [dim], True on real action dims."""
        return self._cached("mask", torch.device(device or "cpu")).clone()

    def steerable_mask(self, device: torch.device) -> torch.Tensor:
        """Like :meth:`real_mask` but shared; do not modify it."""
        return self._cached("mask", device)

    def to_policy(self, actions: torch.Tensor) -> torch.Tensor:
        """Real-unit ``[..., horizon, num_real]`` -> normalized, padded ``[..., horizon, dim]``."""
        if actions.ndim < 2 or tuple(actions.shape[-2:]) != (self.horizon, self.num_real):
            raise ValueError(
                f"real-unit actions must be [..., {self.horizon}, {self.num_real}], "
                f"got {tuple(actions.shape)}"
            )
        normalized = self.normalizer.normalize(actions)
        if not self.has_padding:
            return normalized
        padded = normalized.new_zeros(*actions.shape[:-1], self.dim)
        return padded.index_copy_(-1, self._cached("index", actions.device), normalized)

    def from_policy(self, chunk: torch.Tensor) -> torch.Tensor:
        """Normalized, padded ``[..., horizon, dim]`` -> real-unit ``[..., horizon, num_real]``."""
        if chunk.ndim < 2 or tuple(chunk.shape[-2:]) != self.chunk_shape:
            raise ValueError(
                f"policy-space chunk must be [..., {self.horizon}, {self.dim}], "
                f"got {tuple(chunk.shape)}"
            )
        if self.has_padding:
            chunk = chunk.index_select(-1, self._cached("index", chunk.device))
        return self.normalizer.unnormalize(chunk)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "horizon": self.horizon,
            "dim": self.dim,
            "convention": self.convention.value,
            "num_steps": self.num_steps,
            "real_dims": list(self.real_dims),  # type: ignore[arg-type]
            "normalizer": self.normalizer.to_dict(),
        }
        if self.time_grid != "accumulated":  # files written before the field stay identical
            data["time_grid"] = self.time_grid
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActionSpec:
        known = {"horizon", "dim", "convention", "num_steps", "real_dims", "normalizer"}
        known.add("time_grid")
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ActionSpec fields {sorted(unknown)}")
        fields = dict(data)
        if "convention" in fields:
            fields["convention"] = TimeConvention(fields["convention"])
        if "normalizer" in fields:
            fields["normalizer"] = normalizer_from_dict(fields["normalizer"])
        if fields.get("real_dims") is not None:
            fields["real_dims"] = tuple(fields["real_dims"])
        return cls(**fields)


@runtime_checkable
class FlowPolicy(Protocol[CacheT]):
    """What steering needs from a flow-matching policy.

    ``velocity`` takes ``x`` of shape ``[B, horizon, dim]`` (normalized, padded) and ``t`` of
    shape ``[B]`` in the policy's own :class:`TimeConvention`, and the cache from ``encode`` for
    the same B observations. ``repeat_cache`` repeats each batch entry ``repeats`` times in place
    (``repeat_interleave`` order), so one encode serves many samples per observation.
    """

    @property
    def spec(self) -> ActionSpec: ...

    def encode(self, observation: Observation) -> CacheT: ...

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cache: CacheT) -> torch.Tensor: ...

    def repeat_cache(self, cache: CacheT, repeats: int) -> CacheT: ...


#: Leaves :func:`repeat_batch` passes through unchanged: they carry no batch axis.
_UNBATCHED_LEAVES = (type(None), bool, int, float, complex, str, bytes, enum.Enum)


def repeat_batch(tree: Any, repeats: int) -> Any:
    """``repeat_interleave`` every tensor in a nested tuple/list/dict along dim 0.

    A ready-made ``repeat_cache`` for caches made of batch-first tensors (adapters can reuse it).
    Plain scalars, strings and None pass through; any other object (e.g. a transformers
    ``DynamicCache``, which is not a sequence) raises TypeError rather than being returned
    unrepeated, since a cache whose batch does not match ``x`` is a silent wrong result.
    """
    if repeats == 1:
        return tree
    if isinstance(tree, torch.Tensor):
        return tree.repeat_interleave(repeats, dim=0) if tree.ndim else tree
    if isinstance(tree, Mapping):
        return type(tree)({k: repeat_batch(v, repeats) for k, v in tree.items()})  # type: ignore[call-arg]
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(repeat_batch(v, repeats) for v in tree))
    if isinstance(tree, Sequence) and not isinstance(tree, str):
        return type(tree)(repeat_batch(v, repeats) for v in tree)  # type: ignore[call-arg]
    if isinstance(tree, _UNBATCHED_LEAVES):
        return tree
    raise TypeError(
        f"repeat_batch cannot repeat a {type(tree).__module__}.{type(tree).__qualname__}; "
        "give the policy a repeat_cache that repeats it along its batch axis"
    )
