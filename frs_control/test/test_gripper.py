"""The Franka Hand takes discrete goals: the gripper stream is latched with hysteresis."""

from __future__ import annotations

import pytest

from frs_control.gripper import GripperLatch


def test_latch_turns_a_stream_into_single_open_and_close_events() -> None:
    latch = GripperLatch(close_above=0.6, open_below=0.4)
    stream = [0.0, 0.1, 0.5, 0.59, 0.6, 0.9, 1.0, 0.5, 0.41, 0.4, 0.0, 0.7]
    events = [latch.update(value) for value in stream]
    assert events == [
        "open",  # the first decisive command is sent: the hand's state is unknown at start
        None,
        None,  # inside the band: no chatter
        None,
        "close",
        None,
        None,
        None,
        None,
        "open",
        None,
        "close",
    ]
    assert latch.state == "close"


def test_latch_ignores_noise_inside_the_band() -> None:
    latch = GripperLatch()
    latch.update(1.0)
    assert [latch.update(v) for v in (0.45, 0.55, 0.41, 0.59, 0.5)] == [None] * 5


@pytest.mark.parametrize(("close", "open_"), [(0.4, 0.6), (0.5, 0.5), (1.2, 0.1), (0.6, -0.1)])
def test_latch_rejects_a_band_that_is_not_one(close: float, open_: float) -> None:
    with pytest.raises(ValueError, match="open_below < close_above"):
        GripperLatch(close_above=close, open_below=open_)
