"""The steering node in its own process, driven over Fast DDS by this test process.

This process plays the robot (joint_states, frs/object_states, frs/instruction) and the client of
``frs/steer_chunk``; the node runs a tiny checkpoint trained here on random data.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from builtin_interfaces.msg import Time
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
from steering_client import (
    Result,
    TabletopRobot,
    constant_reference_policy,
    learned_reversal,
    serving_robot,
    start_steering_node,
    stop_node,
    train_tiny_checkpoint,
)

from frs_control.kinematics import ArmKinematics
from frs_control.messages import ns_to_stamp, stamp_to_ns
from frs_msgs.action import SteerChunk
from frs_msgs.msg import CoarseReference
from frs_steering.learning.noise_policy import NoisePolicy, NoisePolicyConfig, save_noise_policy
from frs_steering.learning.observation_input import EntityLayout

# Separate processes on a 2-core machine: a stalled process can miss a deadline the test
# checks; rerun such a test (twice at most) rather than loosen what it checks.
pytestmark = pytest.mark.flaky(reruns=2)

HORIZON, DIM, REAL = 10, 8, 7


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return train_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def _noise_policy(directory: Path, state_dim: int = 46) -> Path:
    """An untrained noise policy for the tiny checkpoint (translation dims, full chunk) that
    reads out the named cube and mat, as the DSBC study's do."""
    config = NoisePolicyConfig(
        {"state": state_dim, "instruction": 384},
        HORIZON,
        DIM,
        target="full",
        noise_dims=(0, 1, 2),
        entities=EntityLayout(anchor=0, objects=(13, 3), targets=(37, 3))
        if state_dim >= 46
        else None,
    )
    return save_noise_policy(NoisePolicy(config, seed=0), directory)


def _residual_policy(directory: Path) -> Path:
    """A residual that moves every translation element of FRS's noise by 5 tanh(0.2) = 0.99."""
    net = NoisePolicy(
        NoisePolicyConfig(
            {"state": 46, "instruction": 384}, HORIZON, DIM, target="full", noise_dims=(0, 1, 2)
        ),
        seed=0,
    )
    with torch.no_grad():
        net.mean_head.weight.zero_()
        net.mean_head.bias.fill_(0.2)
    return save_noise_policy(net, directory)


@pytest.fixture(scope="module")
def robot(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TabletopRobot]:
    log_path = tmp_path_factory.mktemp("steering") / "node.log"
    noise_policy = _noise_policy(tmp_path_factory.mktemp("np") / "dsbc")
    reference_policy = constant_reference_policy(tmp_path_factory.mktemp("rp") / "cloned")
    residual_policy = _residual_policy(tmp_path_factory.mktemp("rs") / "residual")
    with serving_robot(
        log_path,
        f"checkpoint:={checkpoint}",
        "max_observation_age:=2.0",
        f"noise_policy:={noise_policy}",
        f"reference_policy:={reference_policy}",
        f"residual_policy:={residual_policy}",
    ) as robot:
        yield robot


def frs_goal(stamp: Time, **fields) -> SteerChunk.Goal:  # noqa: ANN003
    goal = SteerChunk.Goal(method="frs", observation_stamp=stamp, seed=7, **fields)
    goal.reference.header.frame_id = "fr3_link0"
    goal.reference.direction.y = 1.0  # robot's left
    goal.reference.magnitude = 1.0
    return goal


def test_goal_without_any_observation_is_rejected(robot: TabletopRobot) -> None:
    result = robot.steer(frs_goal(Time()))
    assert result.outcome == Result.OUTCOME_REJECTED
    assert "nothing received on joint_states" in result.reason


def test_valid_goal_returns_refined_chunk(robot: TabletopRobot) -> None:
    robot.instruction.publish(String(data="put the red cube on the yellow mat"))
    stamp = robot.publish_observation()
    feedback: list = []
    result = robot.result(robot.send(frs_goal(stamp), feedback))
    if result.outcome == Result.OUTCOME_REJECTED and "instruction" in result.reason:
        robot.spin_until(lambda: False, 0.5)  # embedding the first instruction
        result = robot.steer(frs_goal(stamp))
    assert result.outcome == Result.OUTCOME_SUCCEEDED, result.reason

    refined = result.refined
    assert (refined.horizon, refined.dim, refined.normalized) == (HORIZON, DIM, False)
    assert refined.action_space == "ee_delta" and refined.header.frame_id == "fr3_link0"
    assert stamp_to_ns(refined.header.stamp) == stamp_to_ns(stamp)
    assert math.isclose(refined.dt, 0.1, rel_tol=1e-6)
    assert list(refined.dim_names)[:3] == ["dx", "dy", "dz"] and len(refined.dim_names) == DIM
    rows = np.asarray(refined.data).reshape(HORIZON, DIM)
    assert np.all(np.isfinite(rows)) and np.all(rows[:, 7] == 0.0)
    for chunk in (result.reference, result.noise):
        assert (chunk.horizon, chunk.dim, chunk.normalized) == (HORIZON, DIM, True)
    assert len(result.unsteered.data) == HORIZON * DIM

    diag = result.diagnostics
    assert diag.method == "frs" and diag.solver == "euler" and diag.num_steps == 10
    assert diag.nfe == 20  # K reverse + K forward (the unsteered sample rides in the batch)
    assert math.isfinite(diag.noise_norm_ratio) and math.isfinite(diag.reference_cosine)
    assert {t.phase for t in diag.timings} >= {"observation", "encode", "reverse", "forward"}
    assert robot.spin_until(lambda: bool(robot.markers) and bool(robot.diagnostics), 5.0)
    assert robot.diagnostics[-1].nfe == 20
    assert [fb.phase for fb in feedback[:1]] in ([], ["reverse"])  # feedback may trail

    markers = {m.ns: m for m in robot.markers[-1].markers}
    assert set(markers) == {"reference", "refined", "unsteered"}
    ee, _ = ArmKinematics().forward(robot.q)
    for marker in markers.values():
        assert marker.header.frame_id == "fr3_link0"
        assert len(marker.points) == HORIZON + 1
        start = marker.points[0]
        np.testing.assert_allclose([start.x, start.y, start.z], ee, atol=1e-6)
    ref_end = markers["reference"].points[-1]
    np.testing.assert_allclose(ref_end.y - ee[1], HORIZON * 0.05, atol=1e-5)  # 10 x 5 cm left


def test_deferral_samples_the_base_policy(robot: TabletopRobot) -> None:
    goal = frs_goal(robot.publish_observation())
    goal.reference.defer = True
    result = robot.steer(goal)
    assert result.outcome == Result.OUTCOME_SUCCEEDED, result.reason
    assert result.diagnostics.method == "base" and result.diagnostics.nfe == 10
    assert len(result.reference.data) == 0


def test_noise_policy_method_needs_no_reference(robot: TabletopRobot) -> None:
    """A deferring reference with method noise_policy runs the loaded noise policy (DSBC)."""
    chunks = []
    for seed in (3, 3, 4):
        goal = frs_goal(robot.publish_observation())
        goal.method, goal.seed = "noise_policy", seed
        goal.reference.defer = True
        goal.reference.direction.y = 0.0
        goal.reference.magnitude = 0.0
        result = robot.steer(goal)
        assert result.outcome == Result.OUTCOME_SUCCEEDED, result.reason
        assert result.diagnostics.method == "noise_policy" and result.diagnostics.nfe >= 10
        noise = np.asarray(result.noise.data).reshape(HORIZON, DIM)
        chunks.append((noise, np.asarray(result.refined.data)))
    # the predicted dims do not depend on the seed; the others are fresh draws
    assert np.allclose(chunks[0][0][:, :3], chunks[2][0][:, :3], atol=0.2)
    assert not np.allclose(chunks[0][0][:, 3:], chunks[2][0][:, 3:])
    assert np.array_equal(chunks[0][0][:, 3:], chunks[1][0][:, 3:])


def test_reference_policy_method_steers_toward_the_cloned_proposal(robot: TabletopRobot) -> None:
    """Method reference_policy ignores the goal's (deferring) reference: FRS steers toward
    what the loaded reference policy proposes from the observation, and the record holds that
    proposal, so a replay of the record reruns the same call."""
    goal = frs_goal(robot.publish_observation())
    goal.method = "reference_policy"
    goal.reference.defer = True
    goal.reference.direction.y = 0.0
    before, markers_before = len(robot.records), len(robot.markers)
    result = robot.steer(goal)
    assert result.outcome == Result.OUTCOME_SUCCEEDED, result.reason
    assert result.diagnostics.method == "frs" and result.diagnostics.nfe == 20
    # the record and this goal's markers (a loaded machine delivers them after the result)
    assert robot.spin_until(lambda: len(robot.records) > before, 5.0)
    assert robot.spin_until(lambda: len(robot.markers) > markers_before, 5.0)
    record = robot.records[-1]
    assert record.requested_method == "reference_policy" and record.method == "frs"
    reference = record.reference
    assert reference.source == CoarseReference.SOURCE_LEARNED and not reference.defer
    direction = [reference.direction.x, reference.direction.y, reference.direction.z]
    assert direction == [1.0, 0.0, 0.0] and reference.magnitude == pytest.approx(0.5)
    markers = {m.ns: m for m in robot.markers[-1].markers}
    ee, _ = ArmKinematics().forward(robot.q)
    end = markers["reference"].points[-1]
    np.testing.assert_allclose(end.x - ee[0], HORIZON * 0.05 * 0.5, atol=1e-5)  # 10 x 2.5 cm


def test_the_residual_policy_moves_reference_policy_goals_and_nothing_else(
    robot: TabletopRobot,
) -> None:
    """A reference_policy goal's FRS noise is moved by the residual policy: the same call as a
    plain frs goal toward the very proposal it recorded (same seed, so the same fresh draw and
    the same unsteered sample) refines to another, finite chunk."""
    goal = frs_goal(robot.publish_observation())
    goal.method, goal.reference.defer = "reference_policy", True
    before = len(robot.records)
    moved = robot.steer(goal)
    assert moved.outcome == Result.OUTCOME_SUCCEEDED, moved.reason
    assert robot.spin_until(lambda: len(robot.records) > before, 5.0)
    plain = frs_goal(goal.observation_stamp)
    plain.reference = robot.records[-1].reference  # the clone's proposal, as a goal would send it
    unmoved = robot.steer(plain)
    assert unmoved.outcome == Result.OUTCOME_SUCCEEDED, unmoved.reason
    assert np.array_equal(moved.unsteered.data, unmoved.unsteered.data)
    refined, plain_refined = np.asarray(moved.refined.data), np.asarray(unmoved.refined.data)
    assert np.all(np.isfinite(refined)) and not np.allclose(refined, plain_refined, atol=1e-4)
    assert moved.diagnostics.nfe == unmoved.diagnostics.nfe == 20
    learned = "learned policies ['noise_policy', 'reference_policy', 'residual_policy']"
    assert learned in robot.log_path.read_text()  # the configure log names what runs


def _bad_goals() -> list[tuple[str, Callable[[SteerChunk.Goal], None], str]]:
    def chunk(horizon: int, dim: int, length: int, value: float = 0.0):  # noqa: ANN202
        def apply(goal: SteerChunk.Goal) -> None:
            c = goal.reference.chunk
            c.horizon, c.dim, c.data = horizon, dim, [value] * length

        return apply

    def set_attr(path: str, value: object):  # noqa: ANN202
        def apply(goal: SteerChunk.Goal) -> None:
            *parents, name = path.split(".")
            target = goal
            for parent in parents:
                target = getattr(target, parent)
            setattr(target, name, value)

        return apply

    def with_mask(goal: SteerChunk.Goal) -> None:
        chunk(HORIZON, REAL, HORIZON * REAL)(goal)
        goal.reference.mask = [True] * 5

    return [
        ("wrong horizon", chunk(3, DIM, 3 * DIM), "reference.chunk is 3x8"),
        ("wrong length", chunk(HORIZON, REAL, 5), "len(data) = 5"),
        ("NaN chunk", chunk(HORIZON, REAL, HORIZON * REAL, math.nan), "NaN"),
        ("1e4 m chunk", chunk(HORIZON, REAL, HORIZON * REAL, 1e4), "out of the policy's range"),
        ("1e30 m chunk", chunk(HORIZON, REAL, HORIZON * REAL, 1e30), "out of the policy's range"),
        ("wrong mask", with_mask, "reference.mask has 5 entries"),
        ("NaN direction", set_attr("reference.direction.x", math.nan), "direction must be finite"),
        ("not unit", set_attr("reference.direction.x", 1.0), "unit vector or zero"),
        ("huge magnitude", set_attr("reference.magnitude", 1e6), "magnitude must be in [0, 1]"),
        ("unknown method", set_attr("method", "telepathy"), "unknown method 'telepathy'"),
        ("too many steps", set_attr("num_steps", 10**6), "exceeds max_num_steps"),
        ("unknown solver", set_attr("solver", "leapfrog"), "unknown solver 'leapfrog'"),
        ("noise scale", set_attr("noise_scale", -1.0), "noise_scale must be in [0, 10]"),
        ("wrong frame", set_attr("reference.header.frame_id", "camera"), "no tf2"),
        ("bad gripper", set_attr("reference.gripper", 9), "reference.gripper 9"),
    ]


def test_malformed_goals_are_rejected_with_a_reason(robot: TabletopRobot) -> None:
    stamp = robot.publish_observation()
    for label, mutate, expected in _bad_goals():
        goal = frs_goal(stamp)
        mutate(goal)
        result = robot.steer(goal)
        assert result.outcome == Result.OUTCOME_REJECTED, label
        assert expected in result.reason, f"{label}: {result.reason!r}"


def test_stale_and_missing_observations_are_rejected(robot: TabletopRobot) -> None:
    stale = robot.publish_observation(age_s=5.0)
    result = robot.steer(frs_goal(stale))
    assert result.outcome == Result.OUTCOME_REJECTED and "stale observation" in result.reason

    latest = robot.publish_observation()
    missing = ns_to_stamp(stamp_to_ns(latest) + 50_000_000)  # nothing was published after it
    result = robot.steer(frs_goal(missing))
    assert result.outcome == Result.OUTCOME_REJECTED and "no observation at stamp" in result.reason

    # The object stream goes stale while joint states stay fresh: refused, naming the stream.
    joints_only = robot.publish_observation(objects=False)
    result = robot.steer(frs_goal(joints_only))
    assert result.outcome == Result.OUTCOME_REJECTED
    assert "no frs/object_states within" in result.reason, result.reason
    result = robot.steer(frs_goal(robot.publish_observation()))  # the stream is back
    assert result.outcome == Result.OUTCOME_SUCCEEDED, result.reason


def _long_goal(stamp: Time) -> SteerChunk.Goal:
    return frs_goal(stamp, num_steps=1000, solver="rk4")  # ~8000 velocity calls: seconds


def test_cancel_mid_integration(robot: TabletopRobot) -> None:
    feedback: list = []
    handle = robot.send(_long_goal(robot.publish_observation()), feedback)
    assert robot.spin_until(lambda: len(feedback) >= 3, 10.0), "no feedback"
    cancel = handle.cancel_goal_async()
    result = robot.result(handle)
    assert result.outcome == Result.OUTCOME_CANCELED, result.reason
    assert cancel.done() or robot.spin_until(cancel.done, 2.0)
    last = feedback[-1]
    assert last.total_steps == 1000
    assert not (last.phase == "forward" and last.step == 1000), "canceled after integrating"


def test_newer_goal_preempts_older(robot: TabletopRobot) -> None:
    feedback: list = []
    stamp = robot.publish_observation()
    old = robot.send(_long_goal(stamp), feedback)
    assert robot.spin_until(lambda: len(feedback) >= 3, 10.0), "no feedback"
    new = robot.send(frs_goal(stamp))
    assert robot.result(old).outcome == Result.OUTCOME_PREEMPTED
    assert robot.result(new).outcome == Result.OUTCOME_SUCCEEDED


def test_an_incompatible_instruction_publisher_is_reported(robot: TabletopRobot) -> None:
    """The node's endpoints carry no rclpy event handlers (latency), but the instruction's QoS
    check stays: a volatile publisher (e.g. a plain ``ros2 topic pub``) never reaches the
    transient-local subscription, and the node says so and how to publish instead."""
    volatile = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    publisher = robot.node.create_publisher(String, "frs/instruction", volatile)
    try:
        warned = robot.spin_until(
            lambda: "frs/instruction offers incompatible QoS" in robot.log_path.read_text(), 15.0
        )
        assert warned, robot.log_path.read_text()[-3000:]
        assert "transient local" in robot.log_path.read_text()
    finally:
        robot.node.destroy_publisher(publisher)


def test_missing_or_corrupt_checkpoint_fails_configure(tmp_path: Path, checkpoint: Path) -> None:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    cases = {tmp_path / "absent": "does not exist", corrupt: "no manifest.json"}
    procs = {
        path: start_steering_node(tmp_path / f"{path.name}.log", f"checkpoint:={path}")
        for path in cases
    }
    mismatched = _noise_policy(tmp_path / "np_mismatch", state_dim=12)
    cases[mismatched] = "noise policy"
    procs[mismatched] = start_steering_node(
        tmp_path / f"{mismatched.name}.log", f"noise_policy:={mismatched}"
    )
    cloned = constant_reference_policy(tmp_path / "rp_mismatch", state_dim=12)
    cases[cloned] = "reference policy"
    procs[cloned] = start_steering_node(
        tmp_path / f"{cloned.name}.log", f"reference_policy:={cloned}"
    )
    not_reversal = _noise_policy(tmp_path / "not_a_reversal")
    cases[not_reversal] = "reads no reference: not a learned reversal"
    tiny = f"checkpoint:={checkpoint}"
    procs[not_reversal] = start_steering_node(
        tmp_path / f"{not_reversal.name}.log", tiny, f"learned_reversal:={not_reversal}"
    )
    reversal = learned_reversal(tmp_path / "reversal_as_dsbc")
    cases[reversal] = "reads a reference: set it as learned_reversal"
    procs[reversal] = start_steering_node(
        tmp_path / f"{reversal.name}.log", tiny, f"noise_policy:={reversal}"
    )
    alone = _residual_policy(tmp_path / "residual_alone")
    cases[alone] = "residual_policy moves FRS toward a reference policy: set one"
    procs[alone] = start_steering_node(tmp_path / f"{alone.name}.log", f"residual_policy:={alone}")
    try:
        for path, expected in cases.items():
            code = procs[path].wait(timeout=60)
            log = (tmp_path / f"{path.name}.log").read_text()
            assert code == 1, log
            assert "configure failed" in log and expected in log, log
            if path in (mismatched, cloned):
                assert "reads {'state': 12" in log, log
    finally:
        for proc in procs.values():
            stop_node(proc)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_idle_unconfigured_node_stops_on_a_signal(sig: int) -> None:
    """No timer, nothing to do (autostart off): SIGINT / SIGTERM still end the process, promptly.

    With rclpy's own signal handling off (so the arm controller can send a last stop), a plain
    ``executor.spin()`` waited in rcl_wait forever and never ran the Python handler: a stopped
    stack left such nodes behind."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "frs_steering.steering_node",
            "--ros-args",
            "-p",
            "autostart:=false",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(8.0)  # imports done, spinning
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        proc.send_signal(sig)
        proc.wait(timeout=5.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            pytest.fail(f"the node ignored signal {sig}")
    assert proc.returncode == 0, proc.communicate()[0][-2000:]
