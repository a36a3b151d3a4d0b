"""The rig split over a network link (policy host | robot PC in two network namespaces).

The audit and the cut measurement are checked on constructed traces (they must catch a stale
row and a late stop); then ``python -m frs_bringup.network_trials`` runs the stack across a veth
pair under each condition (clean, 5 % and 20 % packet loss, 1 Mbit/s and 256 kbit/s caps, a cut
mid-chunk). Skipped only where an unprivileged ``unshare -Urnm`` is refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from frs_bringup.netns import missing_tools, unshare_problem
from frs_bringup.network_trials import (
    CHUNK_TIMEOUT,
    CONDITIONS,
    EXECUTE_ROWS,
    LATE_TOLERANCE,
    GoalTrace,
    audit_goal,
    cut_event,
)

GOAL = {"goal": "ab", "stamp": 100.0, "dt": 0.1, "horizon": 10, "max_points": EXECUTE_ROWS}
# Bounds with margin for a loaded 2-core machine (a 100 Hz tick, status messages in flight).
MARGIN_S = 0.3
STOP_AFTER_LAST_ROW_S = CHUNK_TIMEOUT + MARGIN_S  # the controller's watchdog for chunks
STOP_AFTER_CUT_S = EXECUTE_ROWS * 0.1 + CHUNK_TIMEOUT + MARGIN_S
RESUME_AFTER_RESTORE_S = 5.0
# Below what the stack sends (~1.2 Mbit/s both ways on a clean link: 50 Hz joint and object
# states to two policy-host subscribers), the loop starves: there only safety is required.
STARVED = ("cap256kbit",)


def _trace(accepted: float, total: int, ended: float | None = None) -> GoalTrace:
    return GoalTrace(
        accepted=accepted, ended=ended, end_status=4, feedback=[(accepted + 0.01, 0, total)]
    )


def test_audit_counts_rows_kept_although_due_before_acceptance() -> None:
    # Accepted 0.35 s after the observation: rows due at 100.1 .. 100.3 are past (beyond the
    # 0.02 s tolerance); only the rows due at 100.4 and 100.5 may be kept.
    assert audit_goal(GOAL, _trace(100.35, total=2)).stale_rows == 0
    assert audit_goal(GOAL, _trace(100.35, total=5)).stale_rows == 3  # a controller that kept all
    assert audit_goal(GOAL, _trace(100.09, total=5)).stale_rows == 0  # row 0 within tolerance
    assert audit_goal(GOAL, GoalTrace()).stale_rows == 0  # never reached the controller
    # A succeeded stream ends when its last row (100.5) is due; later means rows ran late.
    assert audit_goal(GOAL, _trace(100.05, 5, ended=100.51)).overrun_s == pytest.approx(0.01)
    assert audit_goal(GOAL, _trace(100.05, 5, ended=101.5)).overrun_s == pytest.approx(1.0)


def test_cut_event_times_the_stop_and_the_resume() -> None:
    commands = [(t / 100, 0.5) for t in range(0, 150)]  # driven until 1.5 s
    commands += [(1.5 + t / 10, 0.0) for t in range(0, 20)]  # zeros from 1.5 s
    commands += [(3.6, 0.4)]
    event = cut_event(commands, cut_at=1.0, restored_at=3.5, last_row_due=1.0, resume_by=10.0)
    assert event.stop_after_cut_s == pytest.approx(0.5)
    assert event.resume_after_restore_s == pytest.approx(0.1)
    # Still driven when the link returned: no stop.
    moving = [(t / 100, 0.5) for t in range(0, 400)]
    assert cut_event(moving, 1.0, 3.5, 1.0, 10.0).stop_after_cut_s is None


def _conditions() -> list[str]:
    """Every condition; the packet-loss ones only where ``nft`` is installed (``make setup``
    installs it as root; elsewhere the test runs the rest and then reports them as skipped)."""
    missing = [tool for tool in missing_tools() if tool != "nft"]
    if missing:
        pytest.fail(f"link tools missing: {missing} (install iproute2 and util-linux)")
    drop = "nft" not in missing_tools()
    return [c for c in CONDITIONS if drop or not c.startswith("drop")]


def _run_trials(tmp_path: Path, episodes: int, timeout: float) -> list[dict]:
    problem = unshare_problem()
    if problem:
        pytest.skip(f"network namespaces unavailable: {problem}")
    out = tmp_path / "network.json"
    command = [
        sys.executable,
        "-m",
        "frs_bringup.network_trials",
        "--episodes",
        str(episodes),
        "--conditions",
        ",".join(_conditions()),
        "--json",
        str(out),
        "--log-dir",
        str(tmp_path / "logs"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    print(done.stdout[-4000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def _check(results: list[dict]) -> None:
    assert [r["condition"] for r in results] == _conditions()
    for r in results:
        name = r["condition"]
        # Every condition with enough bandwidth drove the arm through the link; under none did
        # a row run after its time.
        if name not in STARVED:
            assert r["goals_executed"] > 0, f"{name}: no chunk was executed"
        assert r["stale_rows_executed"] == 0, f"{name}: stale rows executed"
        if r["max_overrun_s"] is not None:
            assert r["max_overrun_s"] <= LATE_TOLERANCE + MARGIN_S, f"{name}: stream ran late"
        if name.startswith("drop"):
            assert r["packets_dropped"] > 0, f"{name}: the drop rule discarded nothing"
    for cut in next(r for r in results if r["condition"] == "cut")["cuts"]:
        assert cut is not None, "the arm was never driven before the cut"
        assert cut["stop_after_cut_s"] is not None, (
            "the arm was still driven when the link came back"
        )
        assert cut["stop_after_cut_s"] <= STOP_AFTER_CUT_S
        assert cut["stop_after_last_row_s"] <= STOP_AFTER_LAST_ROW_S
        if cut["solved_before_resume"]:  # the rows before the cut finished the push
            continue
        assert cut["resume_after_restore_s"] is not None, "not driven again after the link returned"
        assert cut["resume_after_restore_s"] <= RESUME_AFTER_RESTORE_S
    if _conditions() != list(CONDITIONS):
        pytest.skip("drop5 / drop20 not run: nft (Debian's nftables) is not installed")


@pytest.mark.flaky(reruns=1)
def test_split_rig_under_link_conditions(tmp_path: Path) -> None:
    """CI size: two episodes per condition (~2 min)."""
    _check(_run_trials(tmp_path, episodes=2, timeout=420))


@pytest.mark.long
def test_split_rig_under_link_conditions_long(tmp_path: Path) -> None:
    """Nine episodes per condition; on a clean link FRS must beat the base policy's ~10 %."""
    results = _run_trials(tmp_path, episodes=9, timeout=1800)
    clean = next(r for r in results if r["condition"] == "clean")
    assert clean["successes"] >= 4, clean["outcomes"]
    _check(results)
