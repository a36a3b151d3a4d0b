"""``make bench``'s ROS-overhead bench runs on the shipped generalist.

The bench starts the steering node, a floor server and the arm controller in their own processes
and publishes the observations itself. It once sent joint states without velocities, which the
shipped generalist (it reads the end effector's velocity) refuses, so the bench stopped at its
first chunk; this runs it for a few chunks per phase and reads what it wrote. No timing is
asserted (the figures are in docs/benchmarks.md, "ROS overhead").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from frs_bringup.testing import run_script

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_ros_overhead.py"


def test_the_bench_measures_both_phases_on_the_shipped_generalist(tmp_path: Path) -> None:
    run_script(BENCH, "--chunks", "4", "--out", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert Path(results["checkpoint"]).name == "generalist"
    phases = results["phases"]
    assert set(phases) == {"policy host", "with the arm controller"}
    for name, phase in phases.items():
        # the first goal or two may be refused while the node embeds its first instruction
        assert phase["chunks"] == 4 and phase["not_served"] <= 2, (name, phase["not_served"])
        for key in ("in_process_ms", "ros_ms", "rclpy_action_floor_ms"):
            assert math.isfinite(phase[key]["median"]) and phase[key]["median"] > 0, (name, key)
    first_command = phases["with the arm controller"]["stamp_to_first_command_ms"]
    assert first_command["median"] > phases["with the arm controller"]["ros_ms"]["median"] * 0.5
    assert (tmp_path / "latency.png").stat().st_size > 0
