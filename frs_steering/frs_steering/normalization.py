"""Maps between real action units and a policy's normalized action space.

A normalizer acts on the *real* action dims only (last axis); padding is the job of
:class:`frs_steering.policy.ActionSpec`. Statistics are stored as plain float tuples so a
normalizer serializes to JSON and never needs pickle.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

# Guards a zero spread (a constant action dim) against division by zero. Same role as the
# epsilon in pi0/pi0.5's normalization.
SPREAD_EPSILON = 1e-6
# Stands in for a spread that is exactly zero even after its epsilon (LeRobot's processor does
# the same with its own epsilon, 1e-8); only reachable with ``epsilon=0``.
ZERO_SPREAD = 1e-8


def _check_epsilon(epsilon: float) -> float:
    value = float(epsilon)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    return value


@runtime_checkable
class Normalizer(Protocol):
    """Elementwise map from real action units to the policy's space and back."""

    kind: ClassVar[str]

    @property
    def dim(self) -> int | None:
        """Number of real dims the statistics cover (None: any)."""
        ...

    def normalize(self, actions: torch.Tensor) -> torch.Tensor: ...

    def unnormalize(self, actions: torch.Tensor) -> torch.Tensor: ...

    def to_dict(self) -> dict[str, Any]: ...


def _as_float_tuple(name: str, values: Sequence[float]) -> tuple[float, ...]:
    result = tuple(float(v) for v in values)
    if not result:
        raise ValueError(f"{name} must not be empty")
    if not all(math.isfinite(v) for v in result):
        raise ValueError(f"{name} must be finite, got {result}")
    return result


def _check_last_dim(actions: torch.Tensor, dim: int, kind: str) -> None:
    if actions.shape[-1] != dim:
        raise ValueError(
            f"{kind} normalizer covers {dim} real action dims, got last axis "
            f"{actions.shape[-1]} (shape {tuple(actions.shape)})"
        )


class _AffineNormalizer:
    """Shared machinery for ``normalized = (x - center) / scale`` with statistics as tensors
    cached per dtype and device (steering calls normalize on every request)."""

    kind: ClassVar[str]

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def _center_scale(self) -> tuple[list[float], list[float]]:
        raise NotImplementedError

    @functools.cached_property
    def _tensor_cache(self) -> dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]]:
        return {}

    def _affine(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _check_last_dim(like, self.dim, self.kind)
        key = (like.dtype, like.device)
        cached = self._tensor_cache.get(key)
        if cached is None:
            with torch.inference_mode(False):  # usable inside and outside inference mode
                cached = tuple(
                    torch.tensor(values, dtype=like.dtype, device=like.device)
                    for values in self._center_scale()
                )
            self._tensor_cache[key] = cached
        return cached

    def normalize(self, actions: torch.Tensor) -> torch.Tensor:
        center, scale = self._affine(actions)
        return (actions - center) / scale

    def unnormalize(self, actions: torch.Tensor) -> torch.Tensor:
        center, scale = self._affine(actions)
        return actions * scale + center


@dataclass(frozen=True)
class IdentityNormalizer:
    """Actions are already in the policy's space."""

    kind: ClassVar[str] = "identity"

    @property
    def dim(self) -> int | None:
        return None

    def normalize(self, actions: torch.Tensor) -> torch.Tensor:
        return actions

    def unnormalize(self, actions: torch.Tensor) -> torch.Tensor:
        return actions

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}


@dataclass(frozen=True)
class MeanStdNormalizer(_AffineNormalizer):
    """z-scoring: ``(x - mean) / (std + epsilon)`` (pi0 style).

    ``epsilon`` defaults to :data:`SPREAD_EPSILON`; LeRobot's processor uses 1e-8, which its
    adapter sets so a real-unit reference is normalized as LeRobot normalizes actions.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    epsilon: float = SPREAD_EPSILON
    kind: ClassVar[str] = "mean_std"

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", _check_epsilon(self.epsilon))
        object.__setattr__(self, "mean", _as_float_tuple("mean", self.mean))
        object.__setattr__(self, "std", _as_float_tuple("std", self.std))
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} dims but std has {len(self.std)}")
        if any(s < 0 for s in self.std):
            raise ValueError(f"std must be non-negative, got {self.std}")

    @property
    def dim(self) -> int:
        return len(self.mean)

    def _center_scale(self) -> tuple[list[float], list[float]]:
        return list(self.mean), [(s + self.epsilon) or ZERO_SPREAD for s in self.std]

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": self.kind, "mean": list(self.mean), "std": list(self.std)}
        return _with_epsilon(data, self.epsilon)


@dataclass(frozen=True)
class QuantileNormalizer(_AffineNormalizer):
    """pi0.5-style quantile map: q01 goes to -1 and q99 to +1 (no clipping).

    Computed as ``(x - midpoint) / half_spread``, the same map as pi0.5's
    ``(x - q01) / (q99 - q01 + epsilon) * 2 - 1`` up to float rounding. LeRobot's processor
    adds no epsilon (``epsilon=0``; a zero spread becomes :data:`ZERO_SPREAD`).
    """

    q01: tuple[float, ...]
    q99: tuple[float, ...]
    epsilon: float = SPREAD_EPSILON
    kind: ClassVar[str] = "quantile"

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", _check_epsilon(self.epsilon))
        object.__setattr__(self, "q01", _as_float_tuple("q01", self.q01))
        object.__setattr__(self, "q99", _as_float_tuple("q99", self.q99))
        if len(self.q01) != len(self.q99):
            raise ValueError(f"q01 has {len(self.q01)} dims but q99 has {len(self.q99)}")
        if any(hi < lo for lo, hi in zip(self.q01, self.q99, strict=True)):
            raise ValueError("q99 must be >= q01 in every dim")

    @property
    def dim(self) -> int:
        return len(self.q01)

    def _center_scale(self) -> tuple[list[float], list[float]]:
        half_spread = [
            ((hi - lo + self.epsilon) or ZERO_SPREAD) / 2
            for lo, hi in zip(self.q01, self.q99, strict=True)
        ]
        return [lo + h for lo, h in zip(self.q01, half_spread, strict=True)], half_spread

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": self.kind, "q01": list(self.q01), "q99": list(self.q99)}
        return _with_epsilon(data, self.epsilon)


def _with_epsilon(data: dict[str, Any], epsilon: float) -> dict[str, Any]:
    """``data`` plus a non-default epsilon (files written before the field stay identical)."""
    if epsilon != SPREAD_EPSILON:
        data["epsilon"] = epsilon
    return data


_NORMALIZER_KINDS: dict[str, type] = {
    IdentityNormalizer.kind: IdentityNormalizer,
    MeanStdNormalizer.kind: MeanStdNormalizer,
    QuantileNormalizer.kind: QuantileNormalizer,
}


def normalizer_from_dict(data: Mapping[str, Any]) -> Normalizer:
    """Rebuild a normalizer written by ``to_dict`` (raises ValueError on unknown content)."""
    if not isinstance(data, Mapping) or "kind" not in data:
        raise ValueError(f"normalizer entry must be a mapping with a 'kind', got {data!r}")
    kind = data["kind"]
    if kind not in _NORMALIZER_KINDS:
        raise ValueError(f"unknown normalizer kind {kind!r}; known: {sorted(_NORMALIZER_KINDS)}")
    fields = {key: value for key, value in data.items() if key != "kind"}
    try:
        return _NORMALIZER_KINDS[kind](**fields)
    except TypeError as error:
        raise ValueError(f"bad fields for {kind} normalizer: {error}") from error


def fit_normalizer(actions: torch.Tensor, kind: str = "quantile") -> Normalizer:
    """Fit statistics over every axis but the last of real-unit ``actions``."""
    if actions.ndim < 2 or actions.numel() == 0:
        raise ValueError(f"need a non-empty [..., dim] tensor, got shape {tuple(actions.shape)}")
    if not torch.isfinite(actions).all():
        raise ValueError("actions contain NaN or Inf")
    flat = actions.reshape(-1, actions.shape[-1]).double()
    if kind == MeanStdNormalizer.kind:
        return MeanStdNormalizer(mean=flat.mean(0).tolist(), std=flat.std(0).tolist())
    if kind == QuantileNormalizer.kind:
        quantiles = torch.quantile(flat, torch.tensor([0.01, 0.99], dtype=flat.dtype), dim=0)
        return QuantileNormalizer(q01=quantiles[0].tolist(), q99=quantiles[1].tolist())
    if kind == IdentityNormalizer.kind:
        return IdentityNormalizer()
    raise ValueError(f"unknown normalizer kind {kind!r}; known: {sorted(_NORMALIZER_KINDS)}")
