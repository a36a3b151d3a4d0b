"""The plan-ahead schedule, driven with explicit times (no ROS, no sleeps)."""

from __future__ import annotations

import math

import pytest

from frs_vlm_bridge.plan_ahead import (
    ChunkEnd,
    ChunkLatency,
    PlanAhead,
    PlanAheadSettings,
    rows_due,
    rows_to_execute,
)

MS = 1_000_000  # ns
STAMP = 1_000_000 * MS  # an observation stamp, node clock


def test_estimate_is_a_high_quantile_of_recent_latencies() -> None:
    latency = ChunkLatency(initial=0.1, window=10)
    for seconds in [0.05] * 8 + [0.2]:
        latency.add(seconds)
    # 10 samples: the initial 0.1, eight 0.05 and one 0.2 -> the 90th percentile lies between
    # the two largest, so one slow chunk moves planning earlier.
    assert latency.estimate() == pytest.approx(0.11)
    for _ in range(10):
        latency.add(0.05)  # the window forgets the slow one
    assert latency.estimate() == pytest.approx(0.05)


@pytest.mark.parametrize("bad", [-0.01, math.nan, math.inf])
def test_impossible_latencies_are_ignored(bad: float) -> None:
    latency = ChunkLatency(initial=0.1)
    assert not latency.add(bad)
    assert latency.estimate() == pytest.approx(0.1)


@pytest.mark.parametrize(("initial", "window"), [(-0.1, 5), (math.nan, 5), (0.1, 0)])
def test_latency_window_refuses_bad_settings(initial: float, window: int) -> None:
    with pytest.raises(ValueError, match="initial|window"):
        ChunkLatency(initial=initial, window=window)


def test_next_chunk_is_planned_one_latency_and_margin_before_the_chunk_ends() -> None:
    plan = PlanAhead(PlanAheadSettings(margin_s=0.02), ChunkLatency(initial=0.1))
    # No latency measured yet: the initial 0.1 s. 5 rows of 0.1 s end 500 ms after the stamp.
    assert plan.plan_at_ns(STAMP, rows=5, dt_s=0.1) == STAMP + 500 * MS - 120 * MS
    for _ in range(20):  # the controller accepts each chunk 300 ms after its observation
        plan.accepted(STAMP, now_ns=STAMP + 300 * MS)
    assert plan.latency.estimate() == pytest.approx(0.3)
    assert plan.plan_at_ns(STAMP, rows=5, dt_s=0.1) == STAMP + 500 * MS - 320 * MS


def test_acceptance_before_the_stamp_is_not_a_latency() -> None:
    plan = PlanAhead(latency=ChunkLatency(initial=0.1))
    plan.accepted(STAMP, now_ns=STAMP - 5 * MS)  # clocks disagree: ignored, not negative
    assert plan.latency.estimate() == pytest.approx(0.1)


def test_result_wait_ends_at_the_plan_time_and_leaves_the_chunk_running() -> None:
    plan = PlanAhead(PlanAheadSettings(margin_s=0.0), ChunkLatency(initial=0.1))
    plan_at = plan.plan_at_ns(STAMP, rows=10, dt_s=0.1)  # STAMP + 0.9 s
    wait = plan.result_wait(plan_at, now_ns=STAMP + 200 * MS, timeout_left_s=10.0)
    assert wait.plan_next and wait.seconds == pytest.approx(0.7)
    # The pipeline was slower than the chunk: plan the next one at once.
    late = plan.result_wait(plan_at, now_ns=STAMP + 2_000 * MS, timeout_left_s=10.0)
    assert late.plan_next and late.seconds == 0.0


def test_timeout_before_plan_time_means_cancel() -> None:
    plan = PlanAhead(PlanAheadSettings(margin_s=0.0), ChunkLatency(initial=0.1))
    plan_at = plan.plan_at_ns(STAMP, rows=10, dt_s=1.0)  # 9.9 s after the stamp
    wait = plan.result_wait(plan_at, now_ns=STAMP, timeout_left_s=2.0)
    assert not wait.plan_next and wait.seconds == pytest.approx(2.0)
    assert plan.result_wait(plan_at, STAMP, timeout_left_s=-1.0).seconds == 0.0


def test_without_plan_ahead_the_result_is_awaited() -> None:
    plan = PlanAhead(PlanAheadSettings(enabled=False))
    assert plan.plan_at_ns(STAMP, rows=5, dt_s=0.1) is None
    wait = plan.result_wait(None, now_ns=STAMP, timeout_left_s=10.0)
    assert not wait.plan_next and wait.seconds == pytest.approx(10.0)


@pytest.mark.parametrize(("rows", "dt"), [(0, 0.1), (5, 0.0), (5, -0.1), (5, math.nan)])
def test_unusable_chunk_timing_waits_for_the_result(rows: int, dt: float) -> None:
    assert PlanAhead().plan_at_ns(STAMP, rows=rows, dt_s=dt) is None


def test_only_failed_chunks_rest_before_the_next() -> None:
    plan = PlanAhead(PlanAheadSettings(retry_delay_s=0.25))
    # Rejected, stopped or preempted by someone else, not accepted, timed out: rest, then retry.
    assert plan.delay_after(ChunkEnd.FAILED) == 0.25
    assert plan.delay_after(ChunkEnd.SUCCEEDED) == 0.0  # finished early: plan at once
    assert plan.delay_after(ChunkEnd.PLAN_NEXT) == 0.0  # the new chunk preempts the running one


def test_rows_to_execute() -> None:
    assert rows_to_execute(5, 16) == 5
    assert rows_to_execute(0, 16) == 16  # 0 = all
    assert rows_to_execute(40, 16) == 16  # the controller runs no more than the chunk has
    with pytest.raises(ValueError):
        rows_to_execute(-1, 16)
    # Sent late: the rows already due are added, so 5 fresh rows still run (within the chunk).
    assert rows_to_execute(5, 16, rows_late=2) == 7
    assert rows_to_execute(5, 10, rows_late=8) == 10
    assert rows_to_execute(0, 16, rows_late=3) == 16
    with pytest.raises(ValueError):
        rows_to_execute(5, 16, rows_late=-1)


def test_rows_due_counts_rows_whose_time_has_passed() -> None:
    stamp = 10**12
    assert rows_due(stamp, stamp + 60_000_000, 0.1) == 0  # 60 ms: the first row is due at 100
    assert rows_due(stamp, stamp + 100_000_000, 0.1) == 1
    assert rows_due(stamp, stamp + 250_000_000, 0.1) == 2
    assert rows_due(stamp, stamp - 5, 0.1) == 0  # a stamp from the future: nothing due
    for bad in (0.0, -0.1, math.nan, math.inf):
        assert rows_due(stamp, stamp + 10**9, bad) == 0


@pytest.mark.parametrize("field", ["margin_s", "retry_delay_s"])
@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan])
def test_settings_refuse_impossible_times(field: str, bad: float) -> None:
    with pytest.raises(ValueError, match=field):
        PlanAheadSettings(**{field: bad})
