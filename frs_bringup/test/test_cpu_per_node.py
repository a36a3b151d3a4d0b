"""The CPU-per-node bench finds every node process of the running sim stack and reads its ticks.

Runs ``frs_bringup/bench/cpu_per_node.py`` with a short settle time and window (the figures in
docs/benchmarks.md, "CPU per node", come from the default 10 s window); no share is asserted
beyond the simulated robot, which steps physics at 100 Hz, using some CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from frs_bringup.testing import run_script

BENCH = Path(__file__).resolve().parents[1] / "bench" / "cpu_per_node.py"

pytestmark = pytest.mark.flaky(reruns=1)


def test_the_bench_reads_every_node_of_the_sim_stack(tmp_path: Path) -> None:
    run_script(BENCH, "--settle", "3", "--window", "3", "--out", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    shares = results["percent_of_one_core"]
    nodes = {"sim_robot", "arm_controller", "steering", "proposer"}
    assert nodes < set(shares), shares
    assert all(math.isfinite(v) and 0.0 <= v <= 100.0 * results["cores"] for v in shares.values())
    assert shares["sim_robot"] > 1.0, shares  # physics at 100 Hz is not free
    assert 0.0 < results["stack_percent_of_machine"] <= 100.0
    assert results["window_s"] >= 3.0
