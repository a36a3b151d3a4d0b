"""Where the steering node steers a goal: on the executor thread when its shape is known to be
short (``inline_max_duration``), else on the worker. Node in its own process, as in
test_steering_node.py, with a budget large enough to tell the two paths apart by a cancel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from builtin_interfaces.msg import Time
from steering_client import (
    Result,
    TabletopRobot,
    serving_robot,
    train_tiny_checkpoint,
)

from frs_msgs.action import SteerChunk

pytestmark = pytest.mark.flaky(reruns=2)

#: ~0.3 s on the tiny policy here: well inside the 1 s budget, long enough for a cancel to land.
STEPS, SOLVER = 400, "rk4"


@pytest.fixture(scope="module")
def robot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TabletopRobot]:
    checkpoint = train_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")
    log_path = tmp_path_factory.mktemp("steering_inline") / "node.log"
    with serving_robot(
        log_path,
        f"checkpoint:={checkpoint}",
        "max_observation_age:=30.0",
        "inline_max_duration:=1.0",
        name="steering_inline_client",
        instruction="put the red cube on the yellow mat",
    ) as robot:
        yield robot


def _goal(stamp: Time, num_steps: int) -> SteerChunk.Goal:
    goal = SteerChunk.Goal(method="frs", observation_stamp=stamp, seed=3, num_steps=num_steps)
    goal.solver = SOLVER
    goal.reference.header.frame_id = "fr3_link0"
    goal.reference.direction.x = 1.0
    goal.reference.magnitude = 0.5
    return goal


def _steer_with_cancel(robot: TabletopRobot, goal: SteerChunk.Goal) -> Result:
    """Send ``goal`` and cancel it as soon as it is accepted."""
    handle = robot.send(goal)
    handle.cancel_goal_async()
    return robot.result(handle)


def test_a_known_short_shape_steers_inline_with_the_workers_result(robot: TabletopRobot) -> None:
    stamp = robot.publish_observation()
    first = robot.steer(_goal(stamp, STEPS))
    if first.outcome == Result.OUTCOME_REJECTED and "instruction" in first.reason:
        robot.spin_until(lambda: False, 0.5)  # the node is embedding the instruction
        first = robot.steer(_goal(stamp, STEPS))
    assert first.outcome == Result.OUTCOME_SUCCEEDED, first.reason

    # Same shape, now known to take < 1 s: steered in the acceptance callback, so the cancel
    # is read only after the goal has finished, and the result is the worker's bit for bit.
    second = _steer_with_cancel(robot, _goal(stamp, STEPS))
    assert second.outcome == Result.OUTCOME_SUCCEEDED, second.reason
    assert list(second.refined.data) == list(first.refined.data)
    assert list(second.noise.data) == list(first.noise.data)
    assert second.diagnostics.nfe == first.diagnostics.nfe == 2 * STEPS * 4

    # A shape not served before goes to the worker, where the same cancel takes effect.
    third = _steer_with_cancel(robot, _goal(stamp, STEPS + 1))
    assert third.outcome == Result.OUTCOME_CANCELED, third.reason


def test_a_goal_whose_samples_are_missing_is_refused_by_the_worker(robot: TabletopRobot) -> None:
    stamp = robot.publish_observation()
    assert robot.steer(_goal(stamp, STEPS)).outcome == Result.OUTCOME_SUCCEEDED
    # A known-short shape whose observation never comes: the inline path declines it and the
    # worker waits observation_wait, then words the refusal.
    missing = Time(sec=stamp.sec + 5, nanosec=stamp.nanosec)
    result = robot.steer(_goal(missing, STEPS))
    assert result.outcome == Result.OUTCOME_REJECTED
    assert "no observation at stamp" in result.reason


def _set_temperature(robot: TabletopRobot, value: float) -> None:
    """Set the node's ``temperature`` through its parameter service, as ``ros2 param set``."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    client = robot.node.create_client(SetParameters, "/steering/set_parameters")
    try:
        assert robot.spin_until(client.service_is_ready, 10.0), "no parameter service"
        request = SetParameters.Request()
        value_msg = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
        request.parameters = [Parameter(name="temperature", value=value_msg)]
        future = client.call_async(request)
        assert robot.spin_until(future.done, 10.0), "set_parameters did not answer"
        assert future.result().results[0].successful, future.result().results[0].reason
    finally:
        robot.node.destroy_client(client)


def test_temperature_scales_the_policys_own_noise_from_the_next_goal(robot: TabletopRobot) -> None:
    """A deferring goal is the policy's own sample: at temperature 0 it starts from zero noise,
    so goals with different seeds agree; at 1 they differ again."""

    def own_sample(seed: int) -> Result:
        goal = _goal(robot.publish_observation(), 10)
        goal.method, goal.seed = "base", seed
        result = robot.steer(goal)
        assert result.outcome == Result.OUTCOME_SUCCEEDED, result.reason
        return result

    try:
        _set_temperature(robot, 0.0)
        cold = [own_sample(seed) for seed in (1, 2)]
        assert not any(cold[0].noise.data) and list(cold[0].noise.data) == list(cold[1].noise.data)
        assert list(cold[0].refined.data) == list(cold[1].refined.data)
    finally:
        _set_temperature(robot, 1.0)
    warm = [own_sample(seed) for seed in (1, 2)]
    assert list(warm[0].refined.data) != list(warm[1].refined.data)
