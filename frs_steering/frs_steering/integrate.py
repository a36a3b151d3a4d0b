"""Stateless fixed-step ODE integration of a velocity field, forwards and backwards.

The velocity is any callable ``velocity(x, t)`` with ``x`` of shape ``[B, ...]`` and ``t`` of
shape ``[B]``; conditioning lives in the closure. The time grid is built by repeated addition of
one step in ``x``'s dtype, exactly like openpi's JAX sampler (``x += dt * v; t += dt``), so
Euler reproduces that sampler bit for bit; ``time_grid="indexed"`` instead computes
``t_k = t_start + k * dt`` in double and rounds once, as LeRobot's and openpi's PyTorch samplers
do. A reverse pass walks the *same* grid backwards with the same step size, which is what Flow
Reversal Steering needs.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from frs_steering.policy import TimeConvention

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: How grid times are computed: repeated addition in the working dtype, or ``t0 + k*dt``.
TIME_GRIDS = ("accumulated", "indexed")


def check_time_grid(time_grid: str) -> str:
    """``time_grid`` if it names a grid style, else ValueError naming the options."""
    if time_grid not in TIME_GRIDS:
        raise ValueError(f"unknown time_grid {time_grid!r}; choose one of {list(TIME_GRIDS)}")
    return time_grid


class Solver(enum.Enum):
    """Explicit Runge-Kutta schemes; the value of ``stages`` is velocity calls per step."""

    EULER = "euler"
    MIDPOINT = "midpoint"
    HEUN = "heun"
    RK4 = "rk4"

    @property
    def stages(self) -> int:
        return {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[self.value]


def as_solver(solver: Solver | str) -> Solver:
    """Parse a solver name, raising ValueError naming the options."""
    if isinstance(solver, Solver):
        return solver
    try:
        return Solver(solver)
    except ValueError:
        options = [s.value for s in Solver]
        raise ValueError(f"unknown solver {solver!r}; choose one of {options}") from None


@dataclass(frozen=True)
class TimeGrid:
    """``num_steps + 1`` times from ``times[0]`` (start) by repeated addition of ``step``."""

    times: torch.Tensor
    step: torch.Tensor

    @property
    def num_steps(self) -> int:
        return self.times.shape[0] - 1


def make_time_grid(
    t_start: float,
    t_stop: float,
    num_steps: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    time_grid: str = "accumulated",
) -> TimeGrid:
    """Grid from ``t_start`` towards ``t_stop`` accumulated in ``dtype`` (openpi's JAX time
    grid) or, with ``time_grid="indexed"``, ``t_start + k * step`` rounded once (LeRobot's).

    Grids are cached; treat the returned tensors as read-only.
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if t_start == t_stop:
        raise ValueError(f"t_start and t_stop must differ, both are {t_start}")
    return _cached_grid(
        float(t_start),
        float(t_stop),
        num_steps,
        dtype,
        torch.device(device or "cpu"),
        check_time_grid(time_grid),
    )


@functools.lru_cache(maxsize=256)
def _cached_grid(
    t_start: float,
    t_stop: float,
    num_steps: int,
    dtype: torch.dtype,
    device: torch.device,
    time_grid: str,
) -> TimeGrid:
    with torch.inference_mode(False):  # usable inside and outside inference mode
        delta = (t_stop - t_start) / num_steps
        step = torch.tensor(delta, dtype=dtype, device=device)
        if time_grid == "indexed":
            values = [t_start + k * delta for k in range(num_steps + 1)]
            return TimeGrid(times=torch.tensor(values, dtype=dtype, device=device), step=step)
        time = torch.tensor(t_start, dtype=dtype, device=device)
        times = [time]
        for _ in range(num_steps):
            time = time + step
            times.append(time)
        return TimeGrid(times=torch.stack(times), step=step)


def integrate(
    velocity: VelocityFn,
    x: torch.Tensor,
    *,
    t_start: float,
    t_stop: float,
    num_steps: int,
    solver: Solver | str = Solver.EULER,
    reverse: bool = False,
    time_grid: str = "accumulated",
) -> torch.Tensor:
    """Integrate ``dx/dt = velocity(x, t)`` over a fixed-step grid from t_start to t_stop.

    With ``reverse=True`` the grid from t_start to t_stop is built exactly as for the forward
    pass and then walked from its last point back to t_start, each step the exact negative of
    the forward one. ``x`` is not modified. ``time_grid``: see :func:`make_time_grid`.
    """
    grid = make_time_grid(
        t_start, t_stop, num_steps, dtype=x.dtype, device=x.device, time_grid=time_grid
    )
    return integrate_on_grid(velocity, x, grid, solver=solver, reverse=reverse)


def integrate_on_grid(
    velocity: VelocityFn,
    x: torch.Tensor,
    grid: TimeGrid,
    *,
    solver: Solver | str = Solver.EULER,
    reverse: bool = False,
) -> torch.Tensor:
    """As :func:`integrate`, on a prebuilt grid (reuse one grid across many calls)."""
    solver = as_solver(solver)
    if x.ndim < 1:
        raise ValueError("x must have a leading batch axis")
    batch = x.shape[0]
    times = grid.times.to(dtype=x.dtype, device=x.device)  # no copy when they already match
    step = grid.step.to(dtype=x.dtype, device=x.device)
    if reverse:
        times = times.flip(0)
        step = -step
    # One [B] time row per grid point, built once: the loop below only calls the field.
    rows = times.unsqueeze(1).expand(-1, batch).unbind(0)
    if solver is Solver.EULER:
        for k in range(grid.num_steps):
            x = x + step * velocity(x, rows[k])
        return x
    half = step / 2
    mids = (times[:-1] + half).unsqueeze(1).expand(-1, batch).unbind(0)
    for k in range(grid.num_steps):
        t, t_mid, t_next = rows[k], mids[k], rows[k + 1]
        k1 = velocity(x, t)
        if solver is Solver.MIDPOINT:
            x = x + step * velocity(x + half * k1, t_mid)
        elif solver is Solver.HEUN:
            k2 = velocity(x + step * k1, t_next)
            x = x + half * (k1 + k2)
        else:
            k2 = velocity(x + half * k1, t_mid)
            k3 = velocity(x + half * k2, t_mid)
            k4 = velocity(x + step * k3, t_next)
            x = x + (step / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def noise_to_action(
    velocity: VelocityFn,
    noise: torch.Tensor,
    convention: TimeConvention,
    num_steps: int,
    *,
    solver: Solver | str = Solver.EULER,
    noise_level: float = 1.0,
    time_grid: str = "accumulated",
) -> torch.Tensor:
    """Generate: integrate from the time holding ``noise_level`` noise to the data end.

    ``noise_level=1`` is ordinary sampling; a smaller level denoises a partially noised chunk.
    """
    if not 0.0 < noise_level <= 1.0:
        raise ValueError(f"noise_level must be in (0, 1], got {noise_level}")
    return integrate(
        velocity,
        noise,
        t_start=convention.time_at_noise_level(noise_level),
        t_stop=convention.data_time,
        num_steps=num_steps,
        solver=solver,
        time_grid=time_grid,
    )


def action_to_noise(
    velocity: VelocityFn,
    action: torch.Tensor,
    convention: TimeConvention,
    num_steps: int,
    *,
    solver: Solver | str = Solver.EULER,
    time_grid: str = "accumulated",
) -> torch.Tensor:
    """Reverse: walk the sampling grid of :func:`noise_to_action` backwards to pure noise."""
    return integrate(
        velocity,
        action,
        t_start=convention.noise_time,
        t_stop=convention.data_time,
        num_steps=num_steps,
        solver=solver,
        reverse=True,
        time_grid=time_grid,
    )
