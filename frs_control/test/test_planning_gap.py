"""Planning a long chunk must not stall the control loop (issue 14, item 3).

Runs ``frs_control/bench/planning_gap.py`` (controller in its own process, a motionless arm in
the bench's): a 1000-row ee_delta chunk is planned while another streams. Before planning moved
to a worker thread, commands stopped for 0.26-0.29 s here (0.34-0.70 s in the issue); after,
the largest gap was 11-15 ms (control period 10 ms); on a slower day of the same host
(planning 0.26-0.61 s) it was 45-160 ms. A stalled loop's gap is the whole planning time, so
the bound is a share of the planning time measured in the same run, not a fixed figure. A stall
happens in every run; a busy CPU (the full suite on 2 cores) can delay one command now and then
(0.12 s against 0.17 s of planning, once), so the share is asked of the best of three runs and
no run may look like a whole stall.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "planning_gap.py"

pytestmark = pytest.mark.flaky(reruns=2)


def test_commands_keep_flowing_while_a_1000_row_chunk_is_planned() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--repeats", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    numbers = json.loads(done.stdout.strip().splitlines()[-1])
    shares = []
    for run in numbers["runs"]:
        assert run["planning_s"] > 0.05  # the chunk really took a while to plan
        shares.append(run["max_gap_s"] / run["planning_s"])  # a stall: gap ~ planning, share ~1
    assert min(shares) < 0.5, numbers
    assert max(shares) < 0.9, numbers
