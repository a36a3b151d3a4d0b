"""The generated frs_msgs types import, carry their constants, and survive CDR serialization."""

from __future__ import annotations

import math
import random

import pytest
from rclpy.serialization import deserialize_message, serialize_message

from frs_msgs.action import ExecuteChunk, SteerChunk
from frs_msgs.msg import (
    ActionChunk,
    CoarseReference,
    EpisodeStatus,
    ObjectStates,
    PhaseTiming,
    SteeringDiagnostics,
    SteeringRecord,
)
from frs_msgs.srv import ResetEpisode

MESSAGE_TYPES = [
    ActionChunk,
    CoarseReference,
    EpisodeStatus,
    ObjectStates,
    PhaseTiming,
    SteeringDiagnostics,
    SteeringRecord,
    ResetEpisode.Request,
    ResetEpisode.Response,
    SteerChunk.Goal,
    SteerChunk.Result,
    SteerChunk.Feedback,
    ExecuteChunk.Goal,
    ExecuteChunk.Result,
    ExecuteChunk.Feedback,
]


def _value_for(type_name: str, rng: random.Random, depth: int) -> object:
    """A non-default value for a ROS IDL field type string (e.g. 'sequence<float>')."""
    if type_name.startswith("sequence<"):
        inner = type_name[len("sequence<") : -1]
        return [_value_for(inner, rng, depth) for _ in range(rng.randint(1, 4))]
    if type_name == "boolean":
        return True
    if type_name in ("float", "double"):
        return float(rng.randint(-1000, 1000)) / 8.0
    if type_name.startswith(("int", "uint", "octet", "byte")):
        return rng.randint(1, 100)
    if type_name == "string":
        return f"value-{rng.randint(0, 999)}"
    return _populated(_resolve(type_name), rng, depth + 1)


def _resolve(type_name: str) -> type:
    package, _, name = type_name.partition("/")
    module = __import__(f"{package}.msg", fromlist=[name])
    return getattr(module, name)


def _populated(msg_type: type, rng: random.Random, depth: int = 0) -> object:
    """An instance of msg_type with every field, recursively, set away from its default."""
    msg = msg_type()
    if depth > 4:
        return msg
    for field, type_name in msg_type.get_fields_and_field_types().items():
        setattr(msg, field, _value_for(type_name, rng, depth))
    return msg


@pytest.mark.parametrize("msg_type", MESSAGE_TYPES, ids=lambda t: t.__qualname__)
def test_round_trip_through_cdr(msg_type: type) -> None:
    msg = _populated(msg_type, random.Random(7))
    assert msg != msg_type(), "populating the message changed nothing"
    data = serialize_message(msg)
    assert deserialize_message(data, msg_type) == msg


def test_action_chunk_holds_row_major_float32() -> None:
    chunk = ActionChunk(horizon=2, dim=3, dt=0.1, data=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    back = deserialize_message(serialize_message(chunk), ActionChunk)
    assert back.horizon * back.dim == len(back.data)
    assert back.data[1 * 3 + 2] == 5.0
    assert math.isclose(back.dt, 0.1, rel_tol=1e-6)
    with pytest.raises((AssertionError, TypeError)):
        ActionChunk(data=["not a float"])


def test_constants_are_generated() -> None:
    assert SteerChunk.Goal.METHOD_FRS == "frs"
    assert {
        SteerChunk.Goal.METHOD_PARTIAL_NOISING,
        SteerChunk.Goal.METHOD_SAMPLE_RANK,
        SteerChunk.Goal.METHOD_DIRECT,
        SteerChunk.Goal.METHOD_BASE,
        SteerChunk.Goal.METHOD_NOISE_POLICY,
    } == {"partial_noising", "sample_rank", "direct", "base", "noise_policy"}
    assert CoarseReference.SOURCE_VLM != CoarseReference.SOURCE_HUMAN
    assert ExecuteChunk.Result.OUTCOME_STOPPED != ExecuteChunk.Result.OUTCOME_SUCCEEDED
    outcomes = {
        SteerChunk.Result.OUTCOME_SUCCEEDED,
        SteerChunk.Result.OUTCOME_REJECTED,
        SteerChunk.Result.OUTCOME_CANCELED,
        SteerChunk.Result.OUTCOME_PREEMPTED,
        SteerChunk.Result.OUTCOME_FAILED,
    }
    assert len(outcomes) == 5
