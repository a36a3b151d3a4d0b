"""ODE integration: exactness on simple fields, pi0 compatibility, reversal, convergence order."""

import math

import numpy as np
import pytest
import torch

from frs_steering.analytic import GaussianMixturePolicy
from frs_steering.integrate import (
    Solver,
    action_to_noise,
    integrate,
    make_time_grid,
    noise_to_action,
)
from frs_steering.policy import TimeConvention

SOLVERS = [s.value for s in Solver]


def _start(batch: int = 3, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(batch, 4, 2, generator=torch.Generator().manual_seed(7), dtype=dtype)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("num_steps", [1, 3, 10])
def test_constant_field_is_exact_and_reversible(solver, num_steps):
    x0 = _start()
    velocity = torch.linspace(-1.0, 2.0, 8, dtype=torch.float64).reshape(4, 2)

    def field(x, t):
        return velocity.expand_as(x)

    x1 = integrate(field, x0, t_start=0.2, t_stop=0.9, num_steps=num_steps, solver=solver)
    torch.testing.assert_close(x1, x0 + 0.7 * velocity, rtol=0, atol=1e-12)
    back = integrate(
        field, x1, t_start=0.2, t_stop=0.9, num_steps=num_steps, solver=solver, reverse=True
    )
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_field_linear_in_time(solver):
    """v = a + b t: Euler is the left Riemann sum; the higher-order solvers are exact."""
    a, b, k = 0.5, -2.0, 8
    x0 = _start()

    def field(x, t):
        return (a + b * t).reshape(-1, 1, 1).expand_as(x)

    x1 = integrate(field, x0, t_start=0.0, t_stop=1.0, num_steps=k, solver=solver)
    exact = x0 + a + b / 2
    if solver == "euler":
        h = 1.0 / k
        riemann = sum(h * (a + b * i * h) for i in range(k))
        torch.testing.assert_close(x1, x0 + riemann, rtol=0, atol=1e-12)
        assert not torch.allclose(x1, exact)
        # Round trip drift is exactly h * b * (t_start - t_stop) for Euler.
        back = integrate(field, x1, t_start=0.0, t_stop=1.0, num_steps=k, reverse=True)
        torch.testing.assert_close(back, x0 + h * b * (0.0 - 1.0), rtol=0, atol=1e-12)
    else:
        torch.testing.assert_close(x1, exact, rtol=0, atol=1e-12)
        back = integrate(
            field, x1, t_start=0.0, t_stop=1.0, num_steps=k, solver=solver, reverse=True
        )
        torch.testing.assert_close(back, x0, rtol=0, atol=1e-12)


def test_euler_on_linear_field_matches_closed_form():
    rate, k = -1.5, 10
    x0 = _start()
    x1 = integrate(lambda x, t: rate * x, x0, t_start=1.0, t_stop=0.0, num_steps=k)
    torch.testing.assert_close(x1, x0 * (1 - rate / k) ** k, rtol=1e-12, atol=0)


def _pi0_euler_sampler(field, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
    """pi0's sampling loop, written from its description: x += dt*v; t += dt, float32."""
    dt = torch.tensor(-1.0 / num_steps, dtype=torch.float32)
    x_t = noise.clone()
    time = torch.tensor(1.0, dtype=torch.float32)
    while time >= -dt / 2:
        v_t = field(x_t, time.expand(noise.shape[0]))
        x_t += dt * v_t
        time += dt
    return x_t


@pytest.mark.parametrize("num_steps", [1, 5, 10, 17])
def test_euler_is_bitwise_pi0_sampler(num_steps):
    weight = torch.randn(2, 2, generator=torch.Generator().manual_seed(1))

    def field(x, t):
        return torch.tanh(x @ weight) * t[:, None, None] + 0.3 * x - t[:, None, None] ** 2

    noise = _start(5, torch.float32)
    expected = _pi0_euler_sampler(field, noise, num_steps)
    convention = TimeConvention.NOISE_AT_ONE
    got = noise_to_action(field, noise, convention, num_steps)
    assert torch.equal(got, expected)


def test_reverse_walks_the_same_grid_backwards():
    seen: list[torch.Tensor] = []

    def field(x, t):
        seen.append(t.clone())
        return torch.sin(x) + t[:, None, None]

    x0 = _start(2, torch.float32)
    noise_to_action(field, x0, TimeConvention.NOISE_AT_ONE, 10)
    forward_times = torch.stack(seen)
    seen.clear()
    action_to_noise(field, x0, TimeConvention.NOISE_AT_ONE, 10)
    reverse_times = torch.stack(seen)
    grid = make_time_grid(1.0, 0.0, 10).times
    assert torch.equal(forward_times[:, 0], grid[:-1])
    assert torch.equal(reverse_times[:, 0], grid.flip(0)[:-1])
    assert forward_times.dtype == torch.float32


def test_batched_equals_one_by_one():
    def field(x, t):
        return torch.cos(x) * (1 + t[:, None, None])

    x0 = _start(4)
    batched = integrate(field, x0, t_start=1.0, t_stop=0.0, num_steps=6, solver="rk4")
    single = torch.cat(
        [
            integrate(field, x0[i : i + 1], t_start=1.0, t_stop=0.0, num_steps=6, solver="rk4")
            for i in range(4)
        ]
    )
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-14)


def _affine_policy(convention: TimeConvention) -> tuple[GaussianMixturePolicy, float, float]:
    mean, std = 1.5, 0.4
    means = torch.full((1, 4, 2), mean)
    return GaussianMixturePolicy(means, std, convention=convention), mean, std


def _affine_state(convention: TimeConvention, mean, std, z, noise_level: float) -> torch.Tensor:
    """Closed form of the affine flow: x at noise level s is (1-s)*mean + sigma_s * z."""
    s = noise_level
    sigma = math.sqrt((1 - s) ** 2 * std**2 + s**2)
    return (1 - s) * mean + sigma * z


def _log_log_slope(steps, errors) -> float:
    return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


@pytest.mark.parametrize("convention", list(TimeConvention))
@pytest.mark.parametrize(
    ("solver", "order"), [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)]
)
def test_affine_flow_reversal_converges_at_solver_order(convention, solver, order):
    policy, mean, std = _affine_policy(convention)
    z = _start(16)
    action = _affine_state(convention, mean, std, z, 0.0)
    steps = [16, 32, 64, 128]
    errors = []
    for k in steps:
        recovered = action_to_noise(policy.velocity, action, convention, k, solver=solver)
        errors.append((recovered - z).abs().max().item())
    slope = _log_log_slope(steps, errors)
    # At least the nominal order; midpoint happens to reach order 3 on this affine flow.
    assert -order - 1.1 < slope < -order + 0.3, (solver, errors, slope)
    # Fine grids reconstruct the noise.
    recovered = action_to_noise(policy.velocity, action, convention, 256, solver="rk4")
    torch.testing.assert_close(recovered, z, rtol=0, atol=1e-9)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(
    ("solver", "order"), [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)]
)
def test_nonlinear_field_converges_at_exact_solver_order(solver, order, reverse):
    """dx/dt = x^2 has x(t) = x0 / (1 - x0 t); the log-log error slope is the order."""
    x0 = torch.tensor([[0.5], [0.8]], dtype=torch.float64)
    x1 = x0 / (1 - x0)
    start, target = (x1, x0) if reverse else (x0, x1)
    steps = [32, 64, 128, 256]
    errors = [
        (
            integrate(
                lambda x, t: x**2,
                start,
                t_start=0.0,
                t_stop=1.0,
                num_steps=k,
                solver=solver,
                reverse=reverse,
            )
            - target
        )
        .abs()
        .max()
        .item()
        for k in steps
    ]
    slope = _log_log_slope(steps, errors)
    assert -order - 0.3 < slope < -order + 0.3, (errors, slope)


@pytest.mark.parametrize("convention", list(TimeConvention))
def test_partial_range_denoises_from_intermediate_noise_level(convention):
    policy, mean, std = _affine_policy(convention)
    z = _start(8)
    start = _affine_state(convention, mean, std, z, 0.6)
    out = noise_to_action(policy.velocity, start, convention, 64, solver="rk4", noise_level=0.6)
    torch.testing.assert_close(out, mean + std * z, rtol=0, atol=1e-9)
    mid = integrate(
        policy.velocity,
        mean + std * z,
        t_start=convention.time_at_noise_level(0.6),
        t_stop=convention.data_time,
        num_steps=64,
        solver="rk4",
        reverse=True,
    )
    torch.testing.assert_close(mid, start, rtol=0, atol=1e-9)


def test_bad_arguments_raise_value_error():
    x = _start()
    with pytest.raises(ValueError, match="num_steps"):
        integrate(lambda x, t: x, x, t_start=0.0, t_stop=1.0, num_steps=0)
    with pytest.raises(ValueError, match="unknown solver"):
        integrate(lambda x, t: x, x, t_start=0.0, t_stop=1.0, num_steps=2, solver="rk45")
    with pytest.raises(ValueError, match="differ"):
        integrate(lambda x, t: x, x, t_start=0.5, t_stop=0.5, num_steps=2)
    with pytest.raises(ValueError, match="noise_level"):
        noise_to_action(lambda x, t: x, x, TimeConvention.NOISE_AT_ONE, 4, noise_level=0.0)


def test_indexed_time_grid_is_t0_plus_k_dt_rounded_once_and_reverses_exactly():
    from frs_steering.integrate import make_time_grid

    grid = make_time_grid(1.0, 0.0, 10, time_grid="indexed")
    expected = torch.tensor([1.0 + k * -0.1 for k in range(11)], dtype=torch.float32)
    assert torch.equal(grid.times, expected)  # LeRobot's euler_integrate times
    accumulated = make_time_grid(1.0, 0.0, 10)
    assert not torch.equal(accumulated.times, expected)  # the two styles really differ
    seen = []

    def field(x, t):
        seen.append(t[0].item())
        return torch.ones_like(x)

    integrate(field, torch.zeros(1, 2), t_start=1.0, t_stop=0.0, num_steps=10, time_grid="indexed")
    integrate(
        field,
        torch.zeros(1, 2),
        t_start=1.0,
        t_stop=0.0,
        num_steps=10,
        time_grid="indexed",
        reverse=True,
    )
    assert seen[:10] == expected[:10].tolist() and seen[10:] == expected.flip(0)[:10].tolist()
    with pytest.raises(ValueError, match="time_grid"):
        make_time_grid(1.0, 0.0, 10, time_grid="linear")
