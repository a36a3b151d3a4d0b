"""Steering a flow policy toward a coarse reference chunk: FRS and its baselines.

One entry point, :func:`steer`, validates the request, encodes the observation at most once,
runs a registered method and reports the refined chunk with diagnostics. Methods are plain
functions ``method(ctx, **params) -> MethodOutput`` kept in a registry, so new ones (e.g. a DSBC
``noise_policy``) plug in with :func:`register_method` without touching this module.

All chunks here live in the policy's normalized, padded action space ``[B, horizon, dim]``
unless a name ends in ``_real``.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from frs_steering.integrate import Solver, as_solver, integrate
from frs_steering.policy import ActionSpec, FlowPolicy, Observation

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class MethodOutput:
    """What a steering method hands back to :func:`steer`.

    ``noise`` is the noise the chunk was generated from by a full forward pass (None when no
    such noise exists, e.g. direct execution). ``base_chunk`` is an unsteered sample for the
    same observations if the method produced one on the way.
    """

    chunk: torch.Tensor
    noise: torch.Tensor | None = None
    base_chunk: torch.Tensor | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)


SteeringMethod = Callable[..., MethodOutput]

#: ``callback(phase, step, num_steps)`` called before each integration step of every pass
#: (``phase`` is "reverse" or "forward", ``step`` counts completed steps of that pass). Raising
#: from it abandons the call between steps: that is how a node honours cancel and preemption.
StepCallback = Callable[[str, int, int], None]


class SteeringContext:
    """Everything a method needs, with the observation encoded lazily and at most once."""

    def __init__(
        self,
        policy: FlowPolicy,
        reference: torch.Tensor,
        steered: torch.Tensor,
        *,
        observation: Observation | None,
        cache: Any,
        generator: torch.Generator | None,
        num_steps: int,
        solver: Solver,
        include_base_sample: bool,
        step_callback: StepCallback | None = None,
        temperature: float = 1.0,
    ) -> None:
        self.policy = policy
        self.spec: ActionSpec = policy.spec
        self.reference = reference
        self.steered = steered
        self.observation = observation
        self.generator = generator
        self.num_steps = num_steps
        self.solver = solver
        self.include_base_sample = include_base_sample
        self.step_callback = step_callback
        self.temperature = temperature
        self.nfe = 0
        self.encode_calls = 0
        self.timings: dict[str, float] = {}
        self._caches: dict[int, Any] = {} if cache is None else {1: cache}

    @property
    def batch_size(self) -> int:
        return self.reference.shape[0]

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the wall time of the block to ``timings[phase]`` (seconds)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start

    def cache(self, repeats: int = 1) -> Any:
        """The observation cache, each batch entry repeated ``repeats`` times."""
        if 1 not in self._caches:
            if self.observation is None:
                raise ValueError("no observation and no cache given")
            with self.timed("encode"):
                self._caches[1] = self.policy.encode(self.observation)
            self.encode_calls += 1
        if repeats not in self._caches:
            self._caches[repeats] = self.policy.repeat_cache(self._caches[1], repeats)
        return self._caches[repeats]

    def noise(self, *samples: int) -> torch.Tensor:
        """Fresh N(0, temperature^2 I) noise of shape ``[B, *samples, horizon, dim]``."""
        shape = (self.batch_size, *samples, *self.spec.chunk_shape)
        ref = self.reference
        fresh = torch.randn(shape, generator=self.generator, dtype=ref.dtype, device=ref.device)
        return self.temperature * fresh

    def _run(
        self,
        x: torch.Tensor,
        phase: str,
        *,
        t_start: float,
        num_steps: int,
        reverse: bool,
    ) -> torch.Tensor:
        lead = x.shape[: x.ndim - 2]
        repeats = math.prod(lead[1:])
        cache = self.cache(repeats)
        policy = self.policy

        def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return policy.velocity(x_t, t, cache)

        if self.step_callback is not None:
            velocity = _with_step_callback(
                velocity, self.step_callback, phase, num_steps, self.solver.stages
            )

        with self.timed(phase):
            out = integrate(
                velocity,
                x.reshape(-1, *self.spec.chunk_shape),
                t_start=t_start,
                t_stop=self.spec.convention.data_time,
                num_steps=num_steps,
                solver=self.solver,
                reverse=reverse,
                time_grid=self.spec.time_grid,
            )
        self.nfe += num_steps * self.solver.stages
        return out.reshape(x.shape)

    def generate(
        self, noise: torch.Tensor, *, noise_level: float = 1.0, num_steps: int | None = None
    ) -> torch.Tensor:
        """Denoise ``[B, (n,) horizon, dim]`` from ``noise_level`` (1 = pure noise) to actions.

        Extra sample axes share their observation's cache (encoded once, then repeated).
        """
        if not 0.0 < noise_level <= 1.0:
            raise ValueError(f"noise_level must be in (0, 1], got {noise_level}")
        return self._run(
            noise,
            "forward",
            t_start=self.spec.convention.time_at_noise_level(noise_level),
            num_steps=self.num_steps if num_steps is None else num_steps,
            reverse=False,
        )

    def invert(self, chunk: torch.Tensor) -> torch.Tensor:
        """Walk the full sampling grid backwards: action chunk -> its noise."""
        return self._run(
            chunk,
            "reverse",
            t_start=self.spec.convention.noise_time,
            num_steps=self.num_steps,
            reverse=True,
        )


def _with_step_callback(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    callback: StepCallback,
    phase: str,
    num_steps: int,
    stages: int,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``velocity`` that first calls ``callback`` whenever a new integration step begins."""
    calls = 0

    def wrapped(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        if calls % stages == 0:
            callback(phase, calls // stages, num_steps)
        calls += 1
        return velocity(x_t, t)

    return wrapped


@dataclass(frozen=True)
class SteerDiagnostics:
    """Per-call numbers; per-sample ones are ``[B]`` tensors.

    * ``noise_rms``: ``||noise|| / sqrt(horizon*dim)`` (about 1 for typical Gaussian noise).
    * ``noise_log_density``: ``log N(noise; 0, I)`` over the whole padded chunk.
    * ``reference_distance`` / ``base_distance``: RMS difference of the refined / unsteered
      chunk to the reference over the steered elements, in normalized units.
    * ``round_trip_error`` (opt-in): RMS of ``reverse(chunk) - noise`` over the whole chunk, i.e.
      how well the returned noise is recovered from the returned chunk by the same integrator
      (costs ``num_steps`` more velocity calls; tells whether the noise is a trustworthy label).
    * ``nfe``: batched velocity calls; ``encode_calls``: 0 or 1.
    * ``timings``: seconds per phase (encode, reverse, forward, round_trip, total).
    """

    method: str
    solver: str
    num_steps: int
    nfe: int
    encode_calls: int
    reference_distance: torch.Tensor
    noise_rms: torch.Tensor | None
    noise_log_density: torch.Tensor | None
    base_distance: torch.Tensor | None
    round_trip_error: torch.Tensor | None
    timings: Mapping[str, float]
    extras: Mapping[str, Any]


@dataclass(frozen=True)
class SteerResult:
    """Refined chunk (normalized and real units), its noise, the unsteered sample, diagnostics.

    ``reference`` is the normalized, padded reference the method saw and ``steered`` the bool
    ``[B, horizon, dim]`` mask of elements it was steered on (user mask and real dims).
    """

    chunk: torch.Tensor
    chunk_real: torch.Tensor
    noise: torch.Tensor | None
    base_chunk: torch.Tensor | None
    base_chunk_real: torch.Tensor | None
    reference: torch.Tensor
    steered: torch.Tensor
    diagnostics: SteerDiagnostics


_METHODS: dict[str, SteeringMethod] = {}
_SIGNATURES: dict[str, inspect.Signature] = {}


def register_method(name: str, method: SteeringMethod, *, replace: bool = False) -> None:
    """Make ``method(ctx, **params) -> MethodOutput`` available to :func:`steer` as ``name``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"method name must be a non-empty string, got {name!r}")
    if name in _METHODS and not replace:
        raise ValueError(f"steering method {name!r} is already registered")
    _METHODS[name] = method
    _SIGNATURES[name] = inspect.signature(method)


def unregister_method(name: str) -> None:
    """Remove a registered method (raises ValueError if unknown)."""
    get_method(name)
    del _METHODS[name], _SIGNATURES[name]


def available_methods() -> tuple[str, ...]:
    return tuple(sorted(_METHODS))


def get_method(name: str) -> SteeringMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown steering method {name!r}; available: {list(available_methods())}"
        ) from None


def _check_number(name: str, value: Any, low: float, high: float, *, low_open: bool = False):
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# ---------------------------------------------------------------------------- built-in methods


def frs_method(
    ctx: SteeringContext,
    *,
    noise_scale: float = 0.0,
    residual_policy: Callable[[Observation], torch.Tensor] | None = None,
) -> MethodOutput:
    """Flow Reversal Steering: reverse the reference to noise, then sample from that noise.

    Elements not steered (user mask off, padding) take fresh N(0, I) noise; the same fresh
    draw seeds the unsteered base sample, so the two differ only where steering acts.
    ``noise_scale`` adds that much of the fresh draw on the steered elements too.
    ``residual_policy`` (observation -> ``[B, horizon, dim]`` offsets, e.g. a DSRL + FRS actor
    trained around a reference policy) moves the reversed noise on the steered elements.
    """
    _check_number("noise_scale", noise_scale, 0.0, 10.0)
    fresh = ctx.noise()
    reversed_noise = ctx.invert(ctx.reference)
    if noise_scale:
        reversed_noise = reversed_noise + noise_scale * fresh
    if residual_policy is not None:
        reversed_noise = reversed_noise + _residual_offsets(ctx, residual_policy, fresh)
    noise = torch.where(ctx.steered, reversed_noise, fresh)
    if not ctx.include_base_sample:
        return MethodOutput(chunk=ctx.generate(noise), noise=noise)
    both = ctx.generate(torch.stack((noise, fresh), dim=1))
    return MethodOutput(chunk=both[:, 0], noise=noise, base_chunk=both[:, 1])


def _residual_offsets(
    ctx: SteeringContext, residual_policy: Callable[[Observation], torch.Tensor], like: torch.Tensor
) -> torch.Tensor:
    """The residual policy's offsets for ctx's observation, checked: shape and finite values."""
    if ctx.observation is None:
        raise ValueError("a residual_policy needs the observation, not only a cache")
    with ctx.timed("residual_policy"):
        offsets = residual_policy(ctx.observation)
    if not isinstance(offsets, torch.Tensor) or tuple(offsets.shape) != tuple(like.shape):
        got = tuple(offsets.shape) if isinstance(offsets, torch.Tensor) else type(offsets).__name__
        raise ValueError(
            f"residual_policy must give offsets of shape {tuple(like.shape)}, got {got}"
        )
    offsets = offsets.to(like.dtype)
    if not torch.isfinite(offsets).all():
        raise ValueError("residual_policy gave non-finite offsets")
    return offsets


def partial_noising_method(ctx: SteeringContext, *, noise_level: float = 0.5) -> MethodOutput:
    """SDEdit-style baseline: mix the reference with noise up to ``noise_level``, then denoise.

    Denoising keeps the policy's step size, i.e. ``ceil(noise_level * num_steps)`` steps.
    Elements not steered have no reference; they start from the normalized zero action.
    The returned ``noise`` is None: no full-noise preimage is computed.
    """
    _check_number("noise_level", noise_level, 0.0, 1.0, low_open=True)
    steps = max(1, math.ceil(noise_level * ctx.num_steps - 1e-9))
    fresh = ctx.noise()
    start = ctx.reference * ctx.steered
    t_level = ctx.spec.convention.time_at_noise_level(noise_level)
    noised = ctx.spec.convention.interpolate(fresh, start, t_level)
    chunk = ctx.generate(noised, noise_level=noise_level, num_steps=steps)
    base = ctx.generate(fresh) if ctx.include_base_sample else None
    extras = {"noise_level": noise_level, "denoise_steps": steps}
    return MethodOutput(chunk=chunk, base_chunk=base, extras=extras)


def sample_rank_method(ctx: SteeringContext, *, num_samples: int = 8) -> MethodOutput:
    """Best-of-N baseline: keep the sample with the highest cosine similarity to the reference
    over the steered elements. Sample 0 doubles as the unsteered base sample."""
    _check_count("num_samples", num_samples)
    noises = ctx.noise(num_samples)
    chunks = ctx.generate(noises)
    weights = ctx.steered.unsqueeze(1).to(chunks.dtype)
    ref = (ctx.reference.unsqueeze(1) * weights).flatten(2)
    cand = (chunks * weights).flatten(2)
    cosine = torch.nn.functional.cosine_similarity(cand, ref.expand_as(cand), dim=2, eps=1e-12)
    best = cosine.argmax(dim=1)
    rows = torch.arange(ctx.batch_size, device=best.device)
    extras = {"cosine": cosine[rows, best], "best_index": best}
    return MethodOutput(
        chunk=chunks[rows, best], noise=noises[rows, best], base_chunk=chunks[:, 0], extras=extras
    )


def direct_method(ctx: SteeringContext) -> MethodOutput:
    """Execute the reference itself (the naive baseline)."""
    base = ctx.generate(ctx.noise()) if ctx.include_base_sample else None
    return MethodOutput(chunk=ctx.reference.clone(), base_chunk=base)


def base_method(ctx: SteeringContext) -> MethodOutput:
    """Plain sampling from the policy; the reference is ignored (except for diagnostics)."""
    noise = ctx.noise()
    chunk = ctx.generate(noise)
    return MethodOutput(chunk=chunk, noise=noise, base_chunk=chunk)


for _name, _method in (
    ("frs", frs_method),
    ("partial_noising", partial_noising_method),
    ("sample_rank", sample_rank_method),
    ("direct", direct_method),
    ("base", base_method),
):
    register_method(_name, _method)


# ------------------------------------------------------------------------------- entry point


def _prepare_reference(
    spec: ActionSpec, reference: torch.Tensor, normalized: bool
) -> tuple[torch.Tensor, bool]:
    """Return the normalized padded ``[B, H, D]`` float32 reference and whether it was batched."""
    if not isinstance(reference, torch.Tensor):
        raise ValueError(f"reference must be a torch.Tensor, got {type(reference).__name__}")
    width = spec.dim if normalized else spec.num_real
    space = "normalized, padded" if normalized else "real-unit"
    if reference.ndim not in (2, 3) or tuple(reference.shape[-2:]) != (spec.horizon, width):
        raise ValueError(
            f"{space} reference must be [B, {spec.horizon}, {width}] or [{spec.horizon}, {width}],"
            f" got {tuple(reference.shape)}"
        )
    if reference.shape[0] == 0 and reference.ndim == 3:
        raise ValueError("reference batch is empty")
    if not reference.is_floating_point():
        raise ValueError(f"reference must be floating point, got {reference.dtype}")
    batched = reference.ndim == 3
    ref = (reference if batched else reference.unsqueeze(0)).to(torch.float32)
    ref = ref if normalized else spec.to_policy(ref)
    if normalized and spec.has_padding:
        ref = ref * spec.steerable_mask(ref.device)  # padding dims sit at their normalized zero
    if not torch.isfinite(ref).all():  # normalizer stats are finite, so the input was not
        raise ValueError("reference contains NaN or Inf")
    return ref, batched


def _prepare_mask(
    spec: ActionSpec, mask: torch.Tensor | None, reference: torch.Tensor, normalized: bool
) -> torch.Tensor:
    """Bool ``[B, H, D]``: elements to steer (user mask on real dims)."""
    real = spec.steerable_mask(reference.device)
    if mask is None:
        return real.expand(reference.shape)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
    width = spec.dim if normalized else spec.num_real
    batch = reference.shape[0]
    if mask.ndim not in (2, 3) or tuple(mask.shape[-2:]) != (spec.horizon, width):
        raise ValueError(
            f"mask must be [B, {spec.horizon}, {width}] or [{spec.horizon}, {width}] like the "
            f"reference, got {tuple(mask.shape)}"
        )
    if mask.ndim == 3 and mask.shape[0] not in (1, batch):
        raise ValueError(f"mask batch {mask.shape[0]} does not match reference batch {batch}")
    mask = mask.to(reference.device).expand(batch, spec.horizon, width)
    if normalized:
        return mask & real
    full = torch.zeros(reference.shape, dtype=torch.bool, device=reference.device)
    full[..., list(spec.real_dims)] = mask  # type: ignore[arg-type]  # rare path: keep it plain
    return full


def _masked_rms(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(a.dtype)
    count = weights.flatten(1).sum(1).clamp_min(1.0)
    return (((a - b) ** 2 * weights).flatten(1).sum(1) / count).sqrt()


def steer(
    policy: FlowPolicy,
    reference: torch.Tensor,
    *,
    observation: Observation | None = None,
    cache: Any = None,
    method: str = "frs",
    params: Mapping[str, Any] | None = None,
    mask: torch.Tensor | None = None,
    reference_normalized: bool = False,
    generator: torch.Generator | None = None,
    num_steps: int | None = None,
    solver: Solver | str = Solver.EULER,
    include_base_sample: bool = True,
    round_trip: bool = False,
    step_callback: StepCallback | None = None,
    temperature: float = 1.0,
) -> SteerResult:
    """Refine a coarse reference chunk into an in-distribution one with ``method``.

    Give ``observation`` (encoded once here) or a ``cache`` from ``policy.encode`` for B
    observations matching the reference batch; give both to reuse a cache with a method that
    reads the raw observation (``noise_policy``). ``reference`` is real-unit
    ``[B, horizon, num_real]`` or, with ``reference_normalized``, policy-space
    ``[B, horizon, dim]`` (an unbatched chunk means B = 1; outputs are always batched).
    ``mask`` (bool, same layout, True = steer this element) defaults to all real dims.
    ``params`` go to the method (e.g. ``{"noise_level": 0.4}`` for partial noising).
    ``include_base_sample`` also returns an unsteered sample for comparison. Work happens in
    float32 under ``torch.inference_mode`` (``.clone()`` outputs outside inference mode before
    autograd use). Each velocity call sees batch B (or B * samples), never mixed observations.
    ``temperature`` scales every fresh noise draw (the base sample, unsteered elements, the
    baselines' samples; not FRS's inverted noise): below 1 the policy samples nearer its modes
    (low-temperature sampling; its effect on the simulated tasks: docs/benchmarks.md).
    ``step_callback`` (see :data:`StepCallback`) reports progress between integration steps;
    an exception it raises propagates out of ``steer`` with no partial result.
    """
    total_start = time.perf_counter()
    run_method = get_method(method)
    params = dict(params or {})
    try:
        _SIGNATURES[method].bind(None, **params)
    except TypeError as error:
        raise ValueError(f"bad params {sorted(params)} for method {method!r}: {error}") from None
    if observation is None and cache is None:
        raise ValueError("give an observation or a cache")
    _check_number("temperature", temperature, 0.0, 2.0)
    spec = policy.spec
    steps = spec.num_steps if num_steps is None else _check_count("num_steps", num_steps)
    solver = as_solver(solver)
    with torch.inference_mode():
        ref, _ = _prepare_reference(spec, reference, reference_normalized)
        steered = _prepare_mask(spec, mask, ref, reference_normalized)
        ctx = SteeringContext(
            policy,
            ref,
            steered,
            observation=observation,
            cache=cache,
            generator=generator,
            num_steps=steps,
            solver=solver,
            include_base_sample=include_base_sample,
            step_callback=step_callback,
            temperature=float(temperature),
        )
        out = run_method(ctx, **params)
        if not torch.isfinite(out.chunk).all():  # e.g. a finite reference far past the policy's
            raise ValueError(  # range: the flow's steps overflow, and nothing may act on that
                f"method {method!r} made non-finite actions (a reference far outside the "
                "policy's action range?)"
            )
        base = out.base_chunk
        if include_base_sample and base is None:
            base = ctx.generate(ctx.noise())
        if not include_base_sample:
            base = None
        round_trip_error = None
        if round_trip and out.noise is not None:
            with ctx.timed("round_trip"):
                recovered = ctx.invert(out.chunk)
            round_trip_error = (recovered - out.noise).flatten(1).pow(2).mean(1).sqrt()
        noise_rms = noise_log_density = None
        if out.noise is not None:
            squared = out.noise.flatten(1).pow(2).sum(1)
            numel = out.noise[0].numel()
            noise_rms = (squared / numel).sqrt()
            noise_log_density = -0.5 * squared - 0.5 * numel * _LOG_2PI
        diagnostics = SteerDiagnostics(
            method=method,
            solver=solver.value,
            num_steps=steps,
            nfe=ctx.nfe,
            encode_calls=ctx.encode_calls,
            reference_distance=_masked_rms(out.chunk, ref, steered),
            noise_rms=noise_rms,
            noise_log_density=noise_log_density,
            base_distance=None if base is None else _masked_rms(base, ref, steered),
            round_trip_error=round_trip_error,
            timings={**ctx.timings, "total": time.perf_counter() - total_start},
            extras=dict(out.extras),
        )
        return SteerResult(
            chunk=out.chunk,
            chunk_real=spec.from_policy(out.chunk),
            noise=out.noise,
            base_chunk=base,
            base_chunk_real=None if base is None else spec.from_policy(base),
            reference=ref,
            steered=steered,
            diagnostics=diagnostics,
        )


def generate_from_noise(
    policy: FlowPolicy,
    noise: torch.Tensor,
    *,
    observation: Observation,
    num_steps: int | None = None,
    solver: Solver | str = Solver.EULER,
) -> torch.Tensor:
    """The normalized ``[B, horizon, dim]`` chunk a full forward pass makes from ``noise``.

    What a noise label is checked with (does it regenerate its chunk?) and how noise-space RL
    acts; the same integration :func:`steer` runs.
    """
    with torch.inference_mode():
        ctx = SteeringContext(
            policy,
            torch.zeros_like(noise),
            policy.spec.steerable_mask(noise.device).expand_as(noise),
            observation=observation,
            cache=None,
            generator=None,
            num_steps=policy.spec.num_steps if num_steps is None else num_steps,
            solver=as_solver(solver),
            include_base_sample=False,
        )
        return ctx.generate(noise)
