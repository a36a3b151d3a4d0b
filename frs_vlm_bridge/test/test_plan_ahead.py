"""The proposer's latency estimate that times the next chunk (plan_ahead)."""

from __future__ import annotations

import math

import pytest

from frs_vlm_bridge.proposer_node import ChunkLatency


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
    latency.add(bad)
    assert latency.estimate() == pytest.approx(0.1)
