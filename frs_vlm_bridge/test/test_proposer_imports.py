"""What the proposer drags in, checked in fresh interpreters: a rig's proposer needs neither the
learning stack (torch) nor the simulator (mujoco, gymnasium, frs_sim) unless the simulation's
scripted reasoner is configured."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "mujoco", "gymnasium", "frs_sim")

_CONSTRUCT = """
import rclpy
from rclpy.context import Context
from rclpy.parameter import Parameter
from frs_vlm_bridge.proposer_node import ProposerNode
context = Context()
rclpy.init(context=context)
overrides = [Parameter(name, value=value) for name, value in {params!r}.items()]
ProposerNode(context=context, parameter_overrides=overrides).destroy_node()
context.try_shutdown()
"""


def _loaded_after(code: str) -> set[str]:
    """Names of all modules loaded after running ``code`` in a new interpreter."""
    report = "import json, sys\nprint(json.dumps(sorted(sys.modules)))"
    run = subprocess.run(
        [sys.executable, "-c", code + "\n" + report],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return set(json.loads(run.stdout.strip().splitlines()[-1]))


def _heavy(modules: set[str]) -> set[str]:
    return {name for name in modules if name.split(".")[0] in HEAVY}


def test_importing_the_proposer_and_its_modules_loads_nothing_heavy() -> None:
    modules = _loaded_after(
        "import frs_vlm_bridge.proposer_node, frs_vlm_bridge.vlm, frs_vlm_bridge.human"
    )
    assert "frs_vlm_bridge.proposer_node" in modules
    assert not _heavy(modules)


def test_scripted_backend_loads_the_simulation_reasoner() -> None:
    # The positive control: the check sees a simulator import when there is one.
    modules = _loaded_after(_CONSTRUCT.format(params={"reasoner": "scripted"}))
    assert "frs_sim.reasoner" in modules


BACKENDS = [{"reasoner": "none"}, {"reasoner": "human"}, {"reasoner": "vlm", "vlm_model": "m"}]


@pytest.mark.parametrize("params", BACKENDS, ids=lambda p: p["reasoner"])
def test_other_backends_load_neither_torch_nor_the_scripted_reasoner(params: dict) -> None:
    modules = _loaded_after(_CONSTRUCT.format(params=params))
    assert "torch" not in modules and "frs_sim.reasoner" not in modules


@pytest.mark.parametrize("params", BACKENDS, ids=lambda p: p["reasoner"])
def test_other_backends_load_no_simulator(params: dict) -> None:
    assert not _heavy(_loaded_after(_CONSTRUCT.format(params=params)))
