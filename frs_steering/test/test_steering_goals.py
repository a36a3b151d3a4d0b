"""``steering_goals.check_goal`` on malformed observation stamps (no ROS node needed)."""

from __future__ import annotations

import pytest
from builtin_interfaces.msg import Time

from frs_msgs.action import SteerChunk
from frs_steering.steering_goals import GoalRejected, check_goal


def _check(stamp: Time):  # noqa: ANN202
    goal = SteerChunk.Goal(method="frs", observation_stamp=stamp, seed=1)
    return check_goal(goal, max_num_steps=1000, max_samples=64, noise_policy=None)


@pytest.mark.parametrize(
    "stamp",
    [
        Time(sec=-1, nanosec=999_999_999),
        Time(sec=-(2**31)),
        Time(sec=0, nanosec=1_000_000_000),
        Time(sec=1_700_000_000, nanosec=2**32 - 1),
    ],
)
def test_an_invalid_time_is_refused_not_read_as_another_time(stamp: Time) -> None:
    # (sec - 1, nanosec + 1e9) would otherwise match the observation at (sec, nanosec)
    with pytest.raises(GoalRejected, match="observation_stamp .* is not a valid time"):
        _check(stamp)


@pytest.mark.parametrize(
    "stamp", [Time(), Time(sec=0, nanosec=999_999_999), Time(sec=2**31 - 1, nanosec=5)]
)
def test_valid_times_pass(stamp: Time) -> None:
    assert _check(stamp).method == "frs"
