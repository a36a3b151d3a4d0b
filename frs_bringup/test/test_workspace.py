"""The workspace is a proper ROS 2 workspace: format-3 manifests, installed data files, lint-clean
sources, and a set-up script that refuses to leave a half-working venv behind."""

from __future__ import annotations

import filecmp
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ament_index_python.packages import get_package_share_directory
from catkin_pkg.package import parse_package

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["frs_msgs", "frs_control", "frs_steering", "frs_vlm_bridge", "frs_sim", "frs_bringup"]
PYTHON_PACKAGES = PACKAGES[1:]


@pytest.mark.parametrize("name", PACKAGES)
def test_manifest_is_format_3(name: str) -> None:
    package = parse_package(str(REPO_ROOT / name / "package.xml"))
    package.validate()
    assert package.package_format == 3
    assert package.name == name
    expected_build_type = "ament_cmake" if name == "frs_msgs" else "ament_python"
    assert package.get_build_type() == expected_build_type


@pytest.mark.parametrize("name", PYTHON_PACKAGES)
def test_python_package_installs_its_data_files(name: str) -> None:
    share = Path(get_package_share_directory(name))
    assert filecmp.cmp(share / "package.xml", REPO_ROOT / name / "package.xml", shallow=False)
    source = REPO_ROOT / name
    for folder in ("launch", "config", "rviz", "checkpoints"):
        for path in sorted((source / folder).rglob("*")):
            if path.is_file():
                installed = share / path.relative_to(source)
                assert installed.is_file(), f"{installed} not installed"
                assert filecmp.cmp(installed, path, shallow=False), f"{installed} is stale"


def test_interface_definitions_are_installed() -> None:
    share = Path(get_package_share_directory("frs_msgs"))
    for path in [
        *(REPO_ROOT / "frs_msgs/msg").glob("*.msg"),
        *(REPO_ROOT / "frs_msgs/action").glob("*.action"),
    ]:
        assert filecmp.cmp(share / path.parent.name / path.name, path, shallow=False)


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(args: list[str]) -> None:
    ruff = Path(sys.executable).with_name("ruff")
    proc = subprocess.run([str(ruff), *args, str(REPO_ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _run_setup(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts/setup.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "FRS_BUILD": str(tmp_path / "build"), **env},
    )


def test_setup_refuses_a_missing_interpreter(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    proc = _run_setup(tmp_path, FRS_VENV=str(venv), PYTHON="/nonexistent/python3.11")
    assert proc.returncode != 0
    assert "not found" in proc.stderr and "NOT ready" in proc.stderr
    assert not venv.exists()


def test_failed_interface_build_leaves_venv_not_ready(tmp_path: Path) -> None:
    """A venv whose ROS build dependencies are missing stops at frs_msgs with a clear message."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # Python deps importable through a .pth, but no ROS CMake packages under the new prefix.
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "frs_test_deps.pth").write_text(
        next(p for p in sys.path if p.endswith("site-packages")) + "\n"
    )
    requirements = (REPO_ROOT / "scripts/requirements.txt").read_bytes()
    # Pretend the dependency step already ran, so set-up reaches the interface build.
    (venv / f".frs-deps-{hashlib.sha256(requirements).hexdigest()[:16]}").touch()
    proc = _run_setup(tmp_path, FRS_VENV=str(venv), PYTHON=sys.executable)
    assert proc.returncode != 0
    assert "building frs_msgs failed" in proc.stderr
    assert "NOT ready" in proc.stderr
    assert not (venv / ".frs-ready").exists()
    assert not list(venv.glob(".frs-msgs-*"))
