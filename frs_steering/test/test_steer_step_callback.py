"""steer()'s step callback: progress between integration steps, and abandoning a call from it."""

import pytest
import torch

from frs_steering.analytic import example_mixture
from frs_steering.steer import steer


class Abandon(Exception):
    pass


def _run(**kwargs):
    policy = example_mixture(num_steps=4)
    reference = torch.randn(1, 5, 2, generator=torch.Generator().manual_seed(0))
    return steer(
        policy,
        reference,
        observation={"state": torch.zeros(1, 3)},
        generator=torch.Generator().manual_seed(1),
        **kwargs,
    )


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_callback_sees_every_step_of_each_pass_once(solver):
    calls = []
    plain = _run(solver=solver, include_base_sample=False)
    hooked = _run(
        solver=solver, include_base_sample=False, step_callback=lambda *a: calls.append(a)
    )
    assert calls == [("reverse", k, 4) for k in range(4)] + [("forward", k, 4) for k in range(4)]
    assert torch.equal(plain.chunk, hooked.chunk), "the hook must not change the result"
    assert hooked.diagnostics.nfe == plain.diagnostics.nfe


def test_exception_from_callback_abandons_between_steps():
    calls = []

    def stop_in_forward(phase, step, total):
        calls.append((phase, step))
        if phase == "forward" and step == 2:
            raise Abandon

    with pytest.raises(Abandon):
        _run(step_callback=stop_in_forward)
    assert calls[-1] == ("forward", 2)
