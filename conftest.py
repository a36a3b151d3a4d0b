"""Test set-up shared by every package's tests.

Imports resolve to the source tree. Each pytest session gets its own random ROS_DOMAIN_ID with
discovery limited to localhost; `make test` also runs it in a network namespace of its own
(scripts/isolated.sh), so concurrent runs on one host never see each other's nodes. Node
processes a test starts are stopped at teardown, rclpy entities a test left for the garbage
collector are collected before the next test, and Fast DDS shared-memory segments that killed
processes leave behind in /dev/shm are cleaned.
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent
PYTHON_PACKAGES = ("frs_control", "frs_steering", "frs_vlm_bridge", "frs_sim", "frs_bringup")

# Test the source tree, not the snapshot scripts/setup.sh installed into the venv (data files
# under share/ still come from that install); node processes inherit the same path.
_SOURCE_ROOTS = [str(REPO_ROOT / name) for name in PYTHON_PACKAGES]
sys.path[:0] = _SOURCE_ROOTS
os.environ["PYTHONPATH"] = os.pathsep.join(
    [*_SOURCE_ROOTS, *filter(None, [os.environ.get("PYTHONPATH")])]
)

os.environ["ROS_DOMAIN_ID"] = os.environ.get("FRS_TEST_DOMAIN_ID", str(random.randint(1, 101)))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)


def _clean_fastdds_shm() -> None:
    """Remove shared-memory segments and port locks no live process holds."""
    fastdds = shutil.which("fastdds") or str(Path(sys.executable).parent / "fastdds")
    if Path(fastdds).exists():
        subprocess.run([fastdds, "shm", "clean"], capture_output=True, timeout=30, check=False)


@pytest.fixture(scope="session", autouse=True)
def _fastdds_shm_cleanup() -> Iterator[None]:
    yield
    _clean_fastdds_shm()


@pytest.fixture(autouse=True)
def _no_ros_entities_left_over() -> None:
    """Collect garbage before each test once rclpy is loaded.

    A destroyed rclpy node's action servers and clients, and a shut-down context's DDS
    participant, live on until the garbage collector breaks their reference cycles. Until then
    other processes still see them: an earlier test's fake steering server swallowed a later
    test's goals, and its instruction publisher answered a later proposer.
    """
    if "rclpy" in sys.modules:
        gc.collect()


class NodeProcesses:
    """Starts Python scripts as separate OS processes and stops them all at teardown."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``python <args>``; its output is read as it comes into ``proc.log``.

        A pipe nobody reads blocks the node once it has logged ~64 KB (one warning per goal of
        a flood is enough), which looks like a hung node.
        """
        from frs_bringup.testing import OutputLog

        proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        proc.log = OutputLog(proc)  # type: ignore[attr-defined]
        self._procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture
def node_processes() -> Iterator[NodeProcesses]:
    procs = NodeProcesses()
    yield procs
    procs.stop_all()
    _clean_fastdds_shm()


@pytest.fixture
def rclpy_context() -> Iterator[object]:
    """An initialised rclpy context of its own, shut down after the test."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    yield context
    context.try_shutdown()
