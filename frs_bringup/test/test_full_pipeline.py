"""The whole stack, each node in its own process over Fast DDS: sim robot, arm controller,
steering (shipped generalist), proposer (scripted reasoner, FRS), driven by the episode runner."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

from frs_bringup.episode_runner import EpisodeRunner
from frs_bringup.testing import RigClient, ros_args, start_arm_controller, start_sim_robot
from frs_steering.package_data import shipped_checkpoint

# Separate processes on a 2-core machine: a stalled process can miss a deadline the test
# checks; rerun such a test (twice at most) rather than loosen what it checks.
pytestmark = pytest.mark.flaky(reruns=2)

# Novel-split pushes, cycled over EPISODES seeds. The base policy alone solves ~10% of novel
# tasks (frs_sim/results/sim_benchmark); FRS with the scripted reasoner ~83% of novel pushes
# in the pure simulation. Through the four processes (plan-ahead proposer, single-threaded
# executors) FRS solved 5/6 and 3/6 here and 8/9 pushes in an 18-episode `sim_demo` run, so the
# test asserts at least 4/9: a 67% rate fails that 4% of the time (before reruns), a 50% rate
# 25%, while a base-policy rate (10%) passes it 0.8% of the time.
MIN_SUCCESSES = 4
NOVEL_TASKS = ["push_red_yellow", "push_green_purple", "push_blue_white"]
EPISODES = 9


def _start_stack(node_processes, *, method: str = "frs"):  # noqa: ANN001, ANN202
    """Start the four nodes, each in its own process; returns the steering process."""
    start_sim_robot(node_processes, split="novel", max_episode_time=12.0)
    start_arm_controller(node_processes, watchdog_period=0.5)
    steering = node_processes.start(
        "-m", "frs_steering.steering_node", *ros_args({"checkpoint": str(shipped_checkpoint())})
    )
    node_processes.start(
        "-m",
        "frs_vlm_bridge.proposer_node",
        *ros_args({"reasoner": "scripted", "method": method, "start_enabled": False}),
    )
    return steering


@pytest.fixture
def rig(node_processes, rclpy_context):  # noqa: ANN001
    _start_stack(node_processes)
    client = RigClient(rclpy_context)
    client.wait_for_robot(60.0)
    client.wait_for_controller(60.0)
    yield client
    client.destroy()


def test_frs_episodes_succeed_on_novel_tasks(rig, rclpy_context) -> None:  # noqa: ANN001
    runner = EpisodeRunner(
        context=rclpy_context,
        parameter_overrides=[
            Parameter("episodes", value=EPISODES),
            Parameter("tasks", value=NOVEL_TASKS),
            Parameter("seed", value=100),
            Parameter("episode_timeout", value=40.0),
        ],
    )
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(runner)
    executor.add_node(rig.node)  # record the controller's commands while episodes run
    episode_starts: list[float] = []
    start_episode = runner.start_episode

    def start_and_mark(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        episode_starts.append(time.monotonic())
        return start_episode(*args, **kwargs)

    runner.start_episode = start_and_mark  # type: ignore[method-assign]
    try:
        outcomes = runner.run(executor)
    finally:
        executor.remove_node(rig.node)
        executor.remove_node(runner)
        runner.destroy_node()
    assert [o.task for o in outcomes] == [NOVEL_TASKS[i % 3] for i in range(EPISODES)]
    # Each episode ended on a verdict of the simulation (a pushed cube may leave the table), not
    # on the runner's own timeout or a missing status: the stack ran every episode through.
    verdicts = ("success", "timeout", "object dropped off the table")
    assert all(o.reason in verdicts for o in outcomes), [o.line() for o in outcomes]
    # Every episode got refined chunks executed: the controller drove the arm each time.
    bounds = [*episode_starts, time.monotonic()]
    recorded = rig.velocity_commands
    for start, end in zip(bounds, bounds[1:], strict=False):
        speeds = [
            np.abs(np.asarray(m.data)).max()
            for m, t in zip(recorded.messages, recorded.times, strict=True)
            if start <= t < end
        ]
        assert max(speeds, default=0.0) > 1e-3, "an episode ran without driving the arm"
    successes = sum(o.success for o in outcomes)
    print(f"FRS through ROS: {successes}/{len(outcomes)} successes")
    assert successes >= MIN_SUCCESSES, [o.line() for o in outcomes]


def test_killing_steering_stops_the_arm(node_processes, rclpy_context) -> None:  # noqa: ANN001
    """With the steering node gone mid-episode, no new chunks come; the controller must stop."""
    steering = _start_stack(node_processes)
    rig = RigClient(rclpy_context)
    runner = EpisodeRunner(context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(runner)
    try:
        rig.wait_for_robot(60.0)
        rig.wait_for_controller(60.0)
        runner.wait_for_stack(executor)
        runner.start_episode(executor, "push_green_purple", seed=7)
        runner.set_proposer(executor, True)
        # Wait until the arm is being driven, then kill the steering node outright.
        assert rig.spin_until(lambda: _moving(rig, since=time.monotonic() - 0.2), 30.0)
        steering.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        # The chunk in flight (5 rows, 0.5 s) ends, then chunk_timeout (0.5 s): zero velocities.
        rig.spin_for(2.0)
        late = [np.asarray(m.data) for m in rig.velocity_commands.since(killed_at + 1.2)]
        assert late, "the controller stopped publishing instead of commanding a stop"
        assert all(np.allclose(v, 0.0) for v in late), "arm still driven after steering died"
    finally:
        executor.remove_node(runner)
        runner.destroy_node()
        rig.destroy()


def _moving(rig: RigClient, since: float) -> bool:
    commands = rig.velocity_commands.since(since)
    return any(np.abs(np.asarray(m.data)).max() > 1e-3 for m in commands)
