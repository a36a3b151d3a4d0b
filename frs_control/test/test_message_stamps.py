"""Invalid ``builtin_interfaces/Time`` stamps on an ActionChunk are refused, not rescheduled."""

from __future__ import annotations

import numpy as np
import pytest
from builtin_interfaces.msg import Time

from frs_control.execution import ChunkRejected
from frs_control.messages import MessageError, check_time, chunk_request, chunk_to_msg

INVALID = [Time(sec=-1, nanosec=999_999_999), Time(sec=-(2**31)), Time(sec=5, nanosec=10**9)]
INVALID += [Time(sec=1_700_000_000, nanosec=2**32 - 1)]


@pytest.mark.parametrize("stamp", INVALID)
def test_an_invalid_stamp_is_refused_with_its_field(stamp: Time) -> None:
    with pytest.raises(MessageError, match="header.stamp .* is not a valid time"):
        check_time(stamp, "header.stamp")
    chunk = chunk_to_msg(
        np.zeros((2, 8)),
        stamp=Time(sec=1),
        frame_id="",
        action_space="ee_delta",
        dt=0.1,
        dim_names=(),
        normalized=False,
    )
    chunk.header.stamp = stamp  # (sec - 1, nanosec + 1e9) would otherwise run as (sec, nanosec)
    with pytest.raises(ChunkRejected, match="not a valid time"):
        chunk_request(chunk)


@pytest.mark.parametrize("stamp", [Time(), Time(sec=0, nanosec=999_999_999), Time(sec=2**31 - 1)])
def test_valid_stamps_pass(stamp: Time) -> None:
    check_time(stamp, "header.stamp")
