"""The stack definitions (frs_bringup.stacks) are complete and every launch file reads them.

``ros2 launch`` is not installable here, so the launch files are checked as source: each
builds its nodes through frs_bringup.launching from a stack that exists, and declares no FRS
node of its own (the one place a stack's nodes are listed stays frs_bringup.stacks).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from frs_bringup.stacks import BRING_UP_STATES, EPISODE_RUNNER, STACKS, NodeSpec, Stack, get_stack

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCH = REPO_ROOT / "frs_bringup" / "launch"
SPECS = sorted(
    {spec for stack in STACKS.values() for spec in stack.nodes} | {EPISODE_RUNNER},
    key=lambda spec: spec.name,
)


def _console_scripts(package: str) -> dict[str, str]:
    """name -> "module:function" of a package's console_scripts (from its setup.py source)."""
    source = (REPO_ROOT / package / "setup.py").read_text()
    return dict(re.findall(r'"(\w+)\s*=\s*([\w.]+:\w+)"', source))


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_node_spec_names_a_real_node(spec: NodeSpec) -> None:
    """Executable, module and class exist and agree: launch, sim_demo and composition run the
    same code."""
    assert _console_scripts(spec.package).get(spec.executable) == f"{spec.module}:main"
    module = importlib.import_module(spec.module)
    assert callable(getattr(module, "main", None)), spec.module
    assert isinstance(getattr(module, spec.cls, None), type), f"{spec.module}.{spec.cls}"
    assert (REPO_ROOT / spec.package / "package.xml").is_file()
    manifest = (REPO_ROOT / "frs_bringup" / "package.xml").read_text()
    assert spec.package == "frs_bringup" or f"<exec_depend>{spec.package}<" in manifest


@pytest.mark.parametrize("name", sorted(STACKS))
def test_stack_files_exist(name: str) -> None:
    stack = get_stack(name)
    assert (REPO_ROOT / "frs_bringup" / "config" / stack.params_file).is_file()
    if stack.rviz_config:
        assert (REPO_ROOT / "frs_bringup" / "rviz" / stack.rviz_config).is_file()
    assert stack.bring_up in BRING_UP_STATES
    assert stack.nodes, name
    # Arguments that set parameters are declared by the stack.
    declared = {argument.name for argument in stack.arguments}
    for spec in stack.nodes:
        for _parameter, argument in spec.launch_parameters:
            assert argument in declared, f"{name}: {spec.name} reads undeclared {argument}"


def test_stack_definition_rejects_mistakes() -> None:
    node = STACKS["sim"].nodes[0]
    with pytest.raises(ValueError, match="bring_up"):
        Stack(name="x", description="", nodes=(node,), params_file="x.yaml", bring_up="on")
    with pytest.raises(ValueError, match="repeat"):
        Stack(name="x", description="", nodes=(node, node), params_file="x.yaml")
    with pytest.raises(ValueError, match="known"):
        get_stack("no_such_stack")


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _name(call: ast.Call) -> str:
    return getattr(call.func, "id", getattr(call.func, "attr", ""))


@pytest.mark.parametrize("path", sorted(LAUNCH.glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_files_read_the_stack_definition(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert ("frs_bringup.launching", "stack_entities") in imported
    assert ("frs_bringup.stacks", "get_stack") in imported
    calls = _calls(tree)
    named = [c.args[0] for c in calls if _name(c) == "get_stack" and c.args]
    stacks = [a.value for a in named if isinstance(a, ast.Constant)]
    assert all(s in STACKS for s in stacks), stacks  # others choose one at launch time
    assert any(_name(c) == "stack_entities" for c in calls)
    # No FRS node is declared here: the stack definition is the one list of them.
    for call in calls:
        if _name(call) in ("Node", "LifecycleNode"):
            package = next((k.value for k in call.keywords if k.arg == "package"), None)
            assert not (
                isinstance(package, ast.Constant) and str(package.value).startswith("frs_")
            ), f"{path.name} declares an FRS node itself"
        assert _name(call) not in ("LifecycleNode", "ChangeState"), path.name


def test_launching_module_drives_lifecycle_nodes() -> None:
    """launching.py (needs launch) builds nodes from the specs and emits configure/activate."""
    source = (REPO_ROOT / "frs_bringup" / "frs_bringup" / "launching.py").read_text()
    tree = ast.parse(source)
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert {"TRANSITION_CONFIGURE", "TRANSITION_ACTIVATE"} <= names
    assert {"package", "executable", "lifecycle", "launch_parameters"} <= names
    assert '"autostart": False' in source
