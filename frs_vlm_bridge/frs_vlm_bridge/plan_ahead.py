"""When the proposer plans its next chunk, and how long it waits for a chunk's result.

With plan-ahead the proposer does not wait for a chunk to finish: once the arm controller has
accepted it, the proposer waits only until ``chunk end - latency - margin`` and then plans the
next chunk, which preempts the running one on arrival, so the arm never stands still while the
stack thinks. ``latency`` is the 90th percentile of recently measured observation-stamp ->
chunk-accepted times. Without plan-ahead (or when the result comes first) it waits for the
result. A chunk that did not run as asked (steering failed, the controller rejected, stopped
or preempted it, a server was missing or timed out) is followed by ``retry_delay_s`` of rest, so
a broken stack is not hammered.

Pure: times are explicit (integer nanoseconds on the node's clock, or seconds), so every rule is
unit-tested without ROS or sleeps.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

#: Latency assumed until the first chunk has been measured (s).
INITIAL_LATENCY_S = 0.1
#: Quantile of the recent latencies used, so a chunk rarely arrives after its predecessor ended.
LATENCY_QUANTILE = 0.9


class ChunkLatency:
    """Sliding window of observation stamp -> chunk accepted latencies (s).

    The window starts with ``initial`` (the estimate before any chunk is measured); impossible
    samples (negative, NaN, infinite) are ignored. Not thread-safe: one loop thread feeds it.
    """

    def __init__(self, initial: float = INITIAL_LATENCY_S, window: int = 20) -> None:
        if not (math.isfinite(initial) and initial >= 0.0):
            raise ValueError(f"initial latency must be finite and >= 0, got {initial}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._samples: deque[float] = deque([float(initial)], maxlen=window)

    def add(self, seconds: float) -> bool:
        """Record one measured latency; False (and nothing recorded) when it is impossible."""
        if not (math.isfinite(seconds) and seconds >= 0.0):
            return False
        self._samples.append(float(seconds))
        return True

    def estimate(self) -> float:
        """The ``LATENCY_QUANTILE`` quantile of the window (s)."""
        return float(np.quantile(self._samples, LATENCY_QUANTILE))


class ChunkEnd(enum.Enum):
    """How the proposer's handling of one chunk ended."""

    SUCCEEDED = "succeeded"  # the controller executed it to its end
    PLAN_NEXT = "plan_next"  # plan-ahead time reached; the chunk keeps running until preempted
    FAILED = "failed"  # not steered, not accepted, rejected, stopped, preempted or timed out


@dataclass(frozen=True)
class ResultWait:
    """How long to wait for an execution result, and what the wait running out means."""

    seconds: float
    #: True: the plan-ahead time came first; leave the chunk running and plan the next one.
    #: False: the execute timeout came first; the chunk is overdue and gets canceled.
    plan_next: bool


@dataclass(frozen=True)
class PlanAheadSettings:
    """The proposer's timing parameters (``plan_ahead``, ``plan_margin``, ``retry_delay``)."""

    enabled: bool = True
    margin_s: float = 0.02
    retry_delay_s: float = 0.1

    def __post_init__(self) -> None:
        for name in ("margin_s", "retry_delay_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")


def rows_to_execute(execute_rows: int, horizon: int, rows_late: int = 0) -> int:
    """The prefix of a ``horizon``-row chunk to run when ``execute_rows`` are asked (0 = all).

    A chunk that leaves late (its first ``rows_late`` rows already due: a loaded machine) asks
    for that many more rows, so the controller, which drops rows already due, still runs
    ``execute_rows`` fresh ones instead of refusing the whole prefix as stale.
    """
    if execute_rows < 0 or horizon < 0 or rows_late < 0:
        raise ValueError(
            f"execute_rows, horizon and rows_late must be >= 0, got {execute_rows}, {horizon}, "
            f"{rows_late}"
        )
    return min(execute_rows + rows_late, horizon) if execute_rows else horizon


def rows_due(stamp_ns: int, now_ns: int, dt_s: float) -> int:
    """Rows of a chunk from observation ``stamp_ns`` (row i due at stamp + (i + 1) dt) whose
    time has passed at ``now_ns``; 0 for an unusable ``dt_s``."""
    if not (math.isfinite(dt_s) and dt_s > 0.0) or now_ns <= stamp_ns:
        return 0
    return int((now_ns - stamp_ns) * 1e-9 // dt_s)


@dataclass
class PlanAhead:
    """The plan-ahead schedule: when to plan the next chunk, from measured latencies."""

    settings: PlanAheadSettings = field(default_factory=PlanAheadSettings)
    latency: ChunkLatency = field(default_factory=ChunkLatency)

    def accepted(self, stamp_ns: int, now_ns: int) -> None:
        """The controller accepted the chunk from observation ``stamp_ns`` at ``now_ns``."""
        self.latency.add((now_ns - stamp_ns) * 1e-9)

    def plan_at_ns(self, stamp_ns: int, rows: int, dt_s: float) -> int | None:
        """When to plan the chunk after the one from ``stamp_ns`` running ``rows`` rows of ``dt_s``.

        None means wait for the result: plan-ahead is off, or the chunk's timing is unusable.
        The time may already be past (a slow pipeline): then the next chunk is planned at once.
        """
        if not self.settings.enabled or rows < 1 or not (math.isfinite(dt_s) and dt_s > 0.0):
            return None
        end_ns = stamp_ns + int(rows * dt_s * 1e9)
        lead_s = self.latency.estimate() + self.settings.margin_s
        return end_ns - int(lead_s * 1e9)

    def result_wait(self, plan_at_ns: int | None, now_ns: int, timeout_left_s: float) -> ResultWait:
        """How long to wait for the result at ``now_ns`` with ``timeout_left_s`` of its timeout."""
        timeout_left_s = max(0.0, timeout_left_s)
        if plan_at_ns is not None:
            until_plan_s = (plan_at_ns - now_ns) * 1e-9
            if until_plan_s < timeout_left_s:
                return ResultWait(max(0.0, until_plan_s), plan_next=True)
        return ResultWait(timeout_left_s, plan_next=False)

    def delay_after(self, end: ChunkEnd) -> float:
        """Seconds to rest before planning the next chunk after one that ended as ``end``."""
        return self.settings.retry_delay_s if end is ChunkEnd.FAILED else 0.0
