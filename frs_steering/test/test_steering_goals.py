"""``steering_goals``: ``check_goal`` on malformed observation stamps, goal shapes, the
steering-time memory that picks the executor thread, and how a goal ends when steering stops
(no ROS node needed)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from builtin_interfaces.msg import Time

from frs_msgs.action import SteerChunk
from frs_msgs.msg import CoarseReference
from frs_steering.adapters.base import ReferenceSettings
from frs_steering.observation import ObservationError
from frs_steering.reasoning import CoarseProposal, Source
from frs_steering.steering_goals import (
    NODE_PARAMETERS,
    GoalCanceled,
    GoalInputs,
    GoalParameters,
    GoalPreempted,
    GoalRejected,
    LearnedPolicies,
    Prepared,
    SteeringDurations,
    StepMonitor,
    check_goal,
    steer_prepared,
)
from frs_steering.steering_messages import refused, stopped

Result = SteerChunk.Result


def _check(stamp: Time, **fields):  # noqa: ANN003, ANN202
    goal = SteerChunk.Goal(observation_stamp=stamp, **{"method": "frs", "seed": 1, **fields})
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


def test_method_reference_policy_needs_a_loaded_reference_policy() -> None:
    goal = SteerChunk.Goal(method="reference_policy", observation_stamp=Time(sec=1), seed=1)
    goal.reference.defer = True  # the proposer's reasoner "none"
    limits = {"max_num_steps": 1000, "max_samples": 64, "noise_policy": None}
    with pytest.raises(GoalRejected, match="reference_policy parameter"):
        check_goal(goal, **limits)
    request = check_goal(goal, **limits, reference_policy=object())
    assert request.method == "reference_policy" and request.params == {"noise_scale": 0.0}
    with pytest.raises(GoalRejected, match="'reference_policy'"):  # among the available ones
        _check(Time(sec=1), method="no_such_method")


def test_a_reference_policys_proposal_decides_the_method_and_a_bad_input_refuses() -> None:
    """Its deferral runs the policy's own sample, its motion FRS; an observation it cannot
    read refuses the goal (ObservationError) instead of failing the worker."""

    class Fixed:
        def __init__(self, proposal: CoarseProposal | Exception) -> None:
            self.proposal = proposal

        def propose(self, observation: dict) -> CoarseProposal:
            if isinstance(self.proposal, Exception):
                raise self.proposal
            return self.proposal

    goal = SteerChunk.Goal(method="reference_policy", observation_stamp=Time(sec=1), seed=1)
    observation = SimpleNamespace(policy_input={}, instruction="push it")
    adapter = SimpleNamespace(layout=SimpleNamespace(frame_id="fr3_link0"))

    def proposed(proposal: CoarseProposal | Exception, residual: object = None):  # noqa: ANN202
        learned = LearnedPolicies(reference=Fixed(proposal), residual=residual)
        inputs = GoalInputs(None, adapter, None, learned, int, lambda: None)
        request = check_goal(
            goal, max_num_steps=10, max_samples=4, noise_policy=None, reference_policy=Fixed(None)
        )
        return inputs.proposed(goal, request, observation)

    move = CoarseProposal(source=Source.LEARNED, direction=np.array([0.0, 1.0, 0.0]))
    request, reference = proposed(move)
    assert request.method == "frs" and reference.source == CoarseReference.SOURCE_LEARNED
    assert (reference.direction.y, reference.header.frame_id) == (1.0, "fr3_link0")
    assert reference.instruction == "push it" and not reference.defer
    assert "residual_policy" not in request.params
    assert LearnedPolicies(reference=Fixed(move), residual=1).loaded() == [
        "reference_policy",
        "residual_policy",
    ]
    residual = object()  # a residual policy moves FRS's noise, and only FRS's
    request, _ = proposed(move, residual)
    assert request.method == "frs" and request.params["residual_policy"] is residual
    request, reference = proposed(CoarseProposal(source=Source.LEARNED, defer=True), residual)
    assert request.method == "base" and reference.defer
    assert "residual_policy" not in request.params
    with pytest.raises(ObservationError, match="cannot propose: width"):
        proposed(ValueError("width 5, expected 46"))


def test_goal_shape_names_what_the_steering_time_depends_on() -> None:
    shape = _check(Time()).shape()
    assert _check(Time(sec=5), seed=9).shape() == shape  # stamp and seed do not matter
    for fields in (
        {"num_steps": 11},
        {"solver": "rk4"},
        {"method": "sample_rank", "num_samples": 4},
        {"method": "partial_noising", "partial_time": 0.4},
        {"method": "partial_noising", "partial_time": 0.5},
    ):
        assert _check(Time(), **fields).shape() != shape, fields
    assert _check(Time(), method="partial_noising", partial_time=0.4).shape() == (
        _check(Time(), method="partial_noising", partial_time=0.4).shape()
    )


def test_goal_parameters_are_node_parameters_read_once_each_as_their_types() -> None:
    defaults = {name: default for name, default, *_ in NODE_PARAMETERS}
    asked: list[str] = []
    params = GoalParameters.read(lambda name: asked.append(name) or defaults[name])
    assert sorted(asked) == sorted(f.name for f in dataclasses.fields(GoalParameters))
    assert params.max_normalized == 5.0 and params.include_unsteered is True
    whole = GoalParameters.read(lambda name: 2 if name == "max_normalized" else defaults[name])
    assert type(whole.max_normalized) is float  # an integer-valued parameter still reads as float
    layout = SimpleNamespace(frame_id="base", action_space="joint_velocity")
    assert params.reference_settings(layout) == ReferenceSettings(
        "base", "joint_velocity", 0.05, 0, False
    )
    request = _check(Time())
    assert params.shape(request) == params.shape(_check(Time(sec=3)))
    assert params.shape(request) != dataclasses.replace(params, round_trip=True).shape(request)


def test_steering_durations_answer_only_for_shapes_seen_within_the_budget() -> None:
    durations = SteeringDurations(size=3)
    assert not durations.at_most("a", 1.0)  # never served: the worker first
    durations.record("a", 0.010)
    assert durations.at_most("a", 0.02) and not durations.at_most("a", 0.005)
    durations.record("a", 0.030)  # the last call counts: a slower machine moves it back
    assert not durations.at_most("a", 0.02)


def test_steering_durations_stay_bounded_under_ever_new_shapes() -> None:
    durations = SteeringDurations(size=3)
    durations.record("kept", 0.001)
    for i in range(100):
        durations.record(("churn", i), 0.001)
        if i % 2 == 0:
            durations.record("kept", 0.001)  # recently served shapes stay
    assert durations.at_most("kept", 0.01)
    assert not durations.at_most(("churn", 0), 0.01)  # the oldest went
    assert len(durations._last) == 3


@pytest.mark.parametrize(
    ("error", "active", "cancel_requested", "transition", "outcome", "reason"),
    [
        (GoalCanceled(), True, True, "canceled", Result.OUTCOME_CANCELED, "canceled by the client"),
        (GoalCanceled(), False, False, "abort", Result.OUTCOME_CANCELED, "node deactivated"),
        (GoalPreempted(), True, False, "abort", Result.OUTCOME_PREEMPTED, "preempted"),
        (
            RuntimeError("boom"),
            True,
            False,
            "abort",
            Result.OUTCOME_FAILED,
            "steering failed: boom",
        ),
        (ValueError("non-finite"), True, False, "abort", Result.OUTCOME_FAILED, "non-finite"),
        (RuntimeError("boom"), False, False, "abort", Result.OUTCOME_CANCELED, "stopped"),
    ],
)
def test_a_stopped_goal_ends_with_the_outcome_that_names_why(  # noqa: PLR0913
    error: Exception,
    active: bool,
    cancel_requested: bool,
    transition: str,
    outcome: int,
    reason: str,
) -> None:
    served = stopped(error, active=active, cancel_requested=cancel_requested)
    assert served.transition == transition and served.publish is None
    assert served.result.outcome == outcome and reason in served.result.reason


def test_a_refused_goal_is_aborted_with_its_reason() -> None:
    served = refused("no joint_states within 0.05 s")
    assert served.transition == "abort" and served.result.outcome == Result.OUTCOME_REJECTED
    assert served.result.reason == "no joint_states within 0.05 s"


@pytest.mark.parametrize(
    ("canceled", "current", "error"), [(True, True, GoalCanceled), (False, False, GoalPreempted)]
)
def test_a_goal_stopped_while_it_waited_does_no_work(
    canceled: bool, current: bool, error: type[Exception]
) -> None:
    class Untouchable:  # any use of the policy or the inputs would raise AttributeError
        pass

    nothing = Untouchable()
    prepared = Prepared(nothing, nothing, nothing, nothing, 0.0, nothing)  # type: ignore[arg-type]
    monitor = StepMonitor(
        canceled=lambda: canceled, current=lambda: current, publish=None, period=0.0
    )
    with pytest.raises(error):
        steer_prepared(
            nothing,
            prepared,
            monitor,
            include_unsteered=True,
            round_trip=False,
            gripper_index=7,
            limit=5.0,
            temperature=1.0,
        )
