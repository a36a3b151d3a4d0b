"""The steering node with a learned reversal, in its own process (a module of its own: the node
of ``test_steering_node.py`` serves the same action and must be gone before this one starts)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from steering_client import (
    REVERSED,
    Result,
    TabletopRobot,
    constant_reference_policy,
    learned_reversal,
    serving_robot,
    start_steering_node,
    stop_node,
    train_tiny_checkpoint,
)

from frs_msgs.action import SteerChunk

pytestmark = pytest.mark.flaky(reruns=2)  # separate processes on 2 cores, as the node's tests

HORIZON, DIM, REAL = 10, 8, 7


@pytest.fixture(scope="module")
def robot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TabletopRobot]:
    """A steering node with a reference policy and a learned reversal (no residual policy),
    its instruction received."""
    torch.set_num_threads(1)
    checkpoint = train_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")
    log_path = tmp_path_factory.mktemp("reversing") / "node.log"
    with serving_robot(
        log_path,
        f"checkpoint:={checkpoint}",
        "max_observation_age:=2.0",
        f"reference_policy:={constant_reference_policy(tmp_path_factory.mktemp('rp') / 'rp')}",
        f"learned_reversal:={learned_reversal(tmp_path_factory.mktemp('lr') / 'reversal')}",
        instruction="put the red cube on the yellow mat",
    ) as robot:
        yield robot


def _goal(robot: TabletopRobot, method: str) -> SteerChunk.Goal:
    goal = SteerChunk.Goal(method=method, observation_stamp=robot.publish_observation(), seed=7)
    goal.reference.header.frame_id = "fr3_link0"
    goal.reference.direction.y = 1.0
    goal.reference.magnitude = 1.0
    return goal


def _steer(robot: TabletopRobot, goal: SteerChunk.Goal) -> SteerChunk.Result:
    result = robot.steer(goal)
    if result.outcome == Result.OUTCOME_REJECTED and "instruction" in result.reason:
        robot.spin_until(lambda: False, 1.0)  # the node is still embedding the instruction
        result = robot.steer(goal)
    return result


@pytest.mark.parametrize("method", ["learned_reversal", "reference_policy"])
def test_learned_reversal_replaces_the_reverse_pass(robot: TabletopRobot, method: str) -> None:
    """Method learned_reversal, and reference_policy goals with a learned reversal loaded, run
    the forward pass and the one-step reversal its network reads (11 velocity calls; FRS: 20)
    from the reversal's prediction on the commanded translation, fresh noise elsewhere, and the
    record says which method ran."""
    before = len(robot.records)
    result = _steer(robot, _goal(robot, method))
    assert result.outcome == Result.OUTCOME_SUCCEEDED, result.reason
    assert result.diagnostics.method == "learned_reversal" and result.diagnostics.nfe == 11
    noise = np.asarray(result.noise.data).reshape(HORIZON, DIM)
    np.testing.assert_allclose(noise[:, :3], REVERSED, rtol=1e-5)
    assert not np.allclose(noise[:, 3:REAL], REVERSED)
    assert np.all(np.isfinite(result.refined.data))
    assert robot.spin_until(lambda: len(robot.records) > before, 5.0)
    record = robot.records[-1]
    assert record.requested_method == method and record.method == "learned_reversal"


def test_a_hostile_reference_is_refused_before_the_reversal(robot: TabletopRobot) -> None:
    goal = _goal(robot, "learned_reversal")
    goal.reference.direction.x = math.nan
    result = _steer(robot, goal)
    assert result.outcome == Result.OUTCOME_REJECTED and "direction must be finite" in result.reason
    learned = "learned policies ['reference_policy', 'learned_reversal']"
    assert learned in robot.log_path.read_text()


def test_a_residual_policy_with_a_learned_reversal_fails_configure(tmp_path: Path) -> None:
    """A residual policy moves FRS's own reversal: combined with a learned reversal it would
    never run, so the node refuses to configure."""
    noise_policy = learned_reversal(tmp_path / "any")  # refused before any network is read
    proc = start_steering_node(
        tmp_path / "both.log",
        f"reference_policy:={constant_reference_policy(tmp_path / 'rp')}",
        f"residual_policy:={noise_policy}",
        f"learned_reversal:={noise_policy}",
    )
    try:
        assert proc.wait(timeout=60) == 1
        log = (tmp_path / "both.log").read_text()
        assert "configure failed" in log and "moves FRS's own reversal" in log, log
    finally:
        stop_node(proc)
