"""frs_control runs on a robot PC: no torch, gymnasium, MuJoCo or simulator, and its manifest
declares exactly what it imports."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

PACKAGE = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "gymnasium", "gymnasium_robotics", "mujoco", "frs_sim", "frs_steering")
#: Imported only when a parameter asks for them, failing clearly where absent (not declared).
OPTIONAL = {"cv_bridge", "franka_msgs", "moveit"}
#: Python module -> the rosdep key a package.xml names.
ROSDEP_KEYS = {"numpy": "python3-numpy"}


def test_controller_imports_nothing_of_the_simulator_or_learning_stack() -> None:
    """A fresh interpreter imports every frs_control module; none of FORBIDDEN gets loaded."""
    modules = sorted(
        f"frs_control.{path.stem}"
        for path in (PACKAGE / "frs_control").glob("*.py")
        if path.stem != "__init__"
    )
    for required in ("execution", "kinematics", "arm_controller_node"):
        assert f"frs_control.{required}" in modules
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps([m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]))\n"
    )
    # The source roots of every package are on PYTHONPATH (conftest): frs_sim *could* load.
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_forbidden_modules_would_be_seen() -> None:
    """The check above can fail: importing the simulator's IK does load MuJoCo and frs_sim."""
    code = "import sys, frs_sim.ik; print('mujoco' in sys.modules, 'frs_sim' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=120
    )
    assert proc.stdout.split() == ["True", "True"], proc.stderr


def _imported_top_level_modules() -> set[str]:
    found: set[str] = set()
    for path in (PACKAGE / "frs_control").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__", "frs_control"}


def test_manifest_declares_exactly_what_the_package_imports() -> None:
    root = ElementTree.parse(PACKAGE / "package.xml").getroot()
    declared = {element.text for element in root.iter("exec_depend")}
    imported = _imported_top_level_modules()
    assert OPTIONAL <= imported, "update OPTIONAL: an optional import went away"
    required = {ROSDEP_KEYS.get(name, name) for name in imported - OPTIONAL}
    assert declared == required, {
        "declared, not imported": declared - required,
        "imported, not declared": required - declared,
    }
