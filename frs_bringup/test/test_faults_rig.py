"""Fault suite, robot side (issue 14): the simulated robot and the arm controller each in its own
process over Fast DDS; this process is the client and measures.

Each case prints its figure (``FAULT <case>: ...``) and asserts the bound it must meet:
a stalled or killed controller -> the robot holds within its ``command_timeout``; after a stall
the controller executes no row whose time has passed; a stalled or killed robot (joint_states
stop) -> the controller stops commanding motion within ``watchdog_period`` and refuses chunks
as stale; e-stop -> zero velocity at once; a flood of ExecuteChunk goals -> every goal answered,
the controller's memory flat.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from frs_bringup.testing import (
    RigClient,
    ee_delta_rows,
    fresh_joint_stamp,
    last_moving_time,
    make_chunk,
    robot_still_after,
    rss_mb,
    start_arm_controller,
    start_sim_robot,
)
from frs_control.ros_executor import ACTION_BURST_QOS
from frs_msgs.action import ExecuteChunk

# Separate processes on a 2-core machine: a stalled process can miss a deadline the test
# checks; rerun such a test (twice at most) rather than loosen what it checks.
pytestmark = pytest.mark.flaky(reruns=2)

Result = ExecuteChunk.Result
WATCHDOG = 0.25  # s, the controller's watchdog_period in these tests (the rig's value)
COMMAND_TIMEOUT = 0.1  # s, the simulated robot's command_timeout (its default)
# Slack for a loaded 2-core machine: scheduling of three busy Python processes, DDS delivery,
# and the arm's own settling after its targets stop.
SLACK = 0.3


def _rig(node_processes, rclpy_context, **controller):  # noqa: ANN001, ANN003, ANN202
    robot = start_sim_robot(node_processes)
    arm = start_arm_controller(node_processes, watchdog_period=WATCHDOG, **controller)
    client = RigClient(rclpy_context)
    client.wait_for_robot(60.0)
    client.wait_for_controller(60.0)
    # A fresh action client's first goal can take most of a second: warm the path up.
    client.execute(make_chunk(ee_delta_rows(2, (0, 0, 0)), fresh_joint_stamp(client)))
    return robot, arm, client


def _start_moving(client: RigClient, rows: int = 40, step: float = 0.004):  # noqa: ANN202
    """Send a long chunk (rows x 0.1 s, ``step`` m per row along y) and wait until it drives."""
    goal, feedback = client.send_chunk(
        make_chunk(ee_delta_rows(rows, (0.0, step, 0.0)), fresh_joint_stamp(client))
    )
    assert client.spin_until(lambda: bool(feedback) and feedback[-1].points_executed >= 3, 10.0)
    return goal, feedback


def test_stalled_then_killed_controller_the_robot_holds_and_no_stale_row_runs(
    node_processes, rclpy_context
) -> None:  # noqa: ANN001
    _robot, arm, client = _rig(node_processes, rclpy_context)
    goal, feedback = _start_moving(client)

    # SIGSTOP: commands stop; the robot's command timeout must hold the arm.
    figure = robot_still_after(client, arm, signal.SIGSTOP, 1.0)
    print(f"FAULT controller SIGSTOP: robot still {figure:.3f} s after the stop")
    assert figure <= COMMAND_TIMEOUT + SLACK
    q_held = client.latest_joint_state()[1]

    # SIGCONT 1 s later, mid-chunk: rows due meanwhile are in the past and must not run (no
    # catch-up motion); the chunk ends stopped, the arm holds, a fresh chunk runs again.
    continued_at = time.monotonic()
    arm.send_signal(signal.SIGCONT)
    outcome = client.finish(goal, feedback)
    client.spin_for(0.5)
    drift = np.abs(client.arm_positions_since(continued_at) - q_held).max()
    later = client.velocity_commands.since(continued_at + 0.05)
    print(
        f"FAULT controller SIGCONT: outcome {outcome.result.outcome} "
        f"({outcome.result.reason!r}), joint drift {drift:.4f} rad"
    )
    assert outcome.result.outcome == Result.OUTCOME_STOPPED, outcome.result.reason
    assert "stall" in outcome.result.reason
    assert drift < 5e-3, "the controller caught up on rows whose time had passed"
    assert later and all(np.all(np.asarray(m.data) == 0.0) for m in later)
    again = client.execute(make_chunk(ee_delta_rows(5, (0, 0.003, 0)), fresh_joint_stamp(client)))
    assert again.result.outcome == Result.OUTCOME_SUCCEEDED, again.result.reason

    # kill -9 mid-chunk: the robot holds within its command timeout.
    _start_moving(client)
    figure = robot_still_after(client, arm, signal.SIGKILL, 1.0)
    print(f"FAULT controller kill -9: robot still {figure:.3f} s after the kill")
    assert figure <= COMMAND_TIMEOUT + SLACK
    held = client.arm_positions_since(time.monotonic() - 0.5)
    assert np.ptp(held, axis=0).max() < 2e-3
    client.destroy()


def test_stalled_then_killed_robot_the_controller_stops_and_refuses_stale_chunks(
    node_processes, rclpy_context
) -> None:  # noqa: ANN001
    robot, _arm, client = _rig(node_processes, rclpy_context)
    for fault in ("SIGSTOP", "kill -9"):
        goal, feedback = _start_moving(client)
        faulted_at = time.monotonic()
        robot.send_signal(signal.SIGSTOP if fault == "SIGSTOP" else signal.SIGKILL)
        outcome = client.finish(goal, feedback)
        client.spin_for(0.3)
        commands = client.velocity_commands
        last = last_moving_time(commands.messages, commands.times)
        figure = last - faulted_at
        print(f"FAULT robot {fault}: last motion command {figure:.3f} s after the fault")
        assert outcome.result.outcome == Result.OUTCOME_STOPPED
        assert "watchdog" in outcome.result.reason and "stale" in outcome.result.reason
        assert figure <= WATCHDOG + SLACK
        after = [np.asarray(m.data) for m in commands.since(last + 1e-6)]
        assert after and all(np.all(v == 0.0) for v in after), "no zero command after the stop"
        refused = client.execute(
            make_chunk(ee_delta_rows(5, (0, 0.003, 0)), client.latest_joint_state()[0])
        )
        assert refused.result.outcome == Result.OUTCOME_REJECTED
        assert "stale" in refused.result.reason, refused.result.reason
        if fault == "SIGSTOP":  # joint states flow again: chunks run again
            robot.send_signal(signal.SIGCONT)
            assert client.spin_until(
                lambda: time.monotonic() - client.joint_states.times[-1] < 0.05, 10.0
            )
            client.spin_for(0.3)
            again = client.execute(
                make_chunk(ee_delta_rows(5, (0, 0.003, 0)), fresh_joint_stamp(client))
            )
            assert again.result.outcome == Result.OUTCOME_SUCCEEDED, again.result.reason
    client.destroy()


def test_estop_during_a_streaming_chunk_zeroes_at_once_and_latches(
    node_processes, rclpy_context
) -> None:  # noqa: ANN001
    _robot, _arm, client = _rig(node_processes, rclpy_context)
    goal, feedback = _start_moving(client)
    called_at = time.monotonic()
    response = client.trigger("estop")
    answered_at = time.monotonic()
    assert response.success
    outcome = client.finish(goal, feedback)
    client.spin_for(0.5)
    commands = client.velocity_commands
    last = last_moving_time(commands.messages, commands.times)
    figure = max(0.0, last - called_at)
    print(
        f"FAULT e-stop: last motion command {figure:.3f} s after the call "
        f"(service answered in {answered_at - called_at:.3f} s)"
    )
    assert outcome.result.outcome == Result.OUTCOME_STOPPED and "e-stop" in outcome.result.reason
    # The stop is published in the service callback, before its answer: nothing moving arrives
    # after the answer (plus delivery), and the stop comes within one control period of the call
    # being served.
    assert last <= answered_at + 0.02
    assert np.all(np.asarray(commands.messages[-1].data) == 0.0)
    refused = client.execute(make_chunk(ee_delta_rows(5, (0, 0.003, 0)), fresh_joint_stamp(client)))
    assert refused.result.outcome == Result.OUTCOME_REJECTED and "e-stop" in refused.result.reason
    assert refused.result.points_executed == 0
    assert client.trigger("reset_estop").success
    again = client.execute(make_chunk(ee_delta_rows(5, (0, 0.003, 0)), fresh_joint_stamp(client)))
    assert again.result.outcome == Result.OUTCOME_SUCCEEDED, again.result.reason
    client.destroy()


FLOOD = 500


def _flood(client: RigClient, action_client, goal: ExecuteChunk.Goal) -> tuple[float, dict]:  # noqa: ANN001
    """Send FLOOD copies of ``goal`` at once; (s until every goal had its final answer,
    counts of refused / each outcome)."""
    start = time.monotonic()
    futures = [action_client.send_goal_async(goal) for _ in range(FLOOD)]
    assert client.spin_until(lambda: all(f.done() for f in futures), 60.0), (
        f"{sum(f.done() for f in futures)} of {FLOOD} goals answered"
    )
    handles = [f.result() for f in futures]
    results = [h.get_result_async() for h in handles if h.accepted]
    assert client.spin_until(lambda: all(r.done() for r in results), 60.0), (
        f"{sum(r.done() for r in results)} of {len(results)} accepted goals got a result"
    )
    counts = {"refused": FLOOD - len(results)}
    for r in results:
        key = f"outcome {r.result().result.outcome}"
        counts[key] = counts.get(key, 0) + 1
    return time.monotonic() - start, counts


def test_a_flood_of_execute_goals_is_answered_and_memory_stays_flat(
    node_processes, rclpy_context
) -> None:  # noqa: ANN001
    from rclpy.action import ActionClient

    _robot, arm, client = _rig(node_processes, rclpy_context, max_pending_goals=32)
    action_client = ActionClient(client.node, ExecuteChunk, "frs/execute_chunk", **ACTION_BURST_QOS)
    assert action_client.wait_for_server(timeout_sec=10.0)
    q_before = client.latest_joint_state()[1]
    mark = time.monotonic()
    rss = []
    for flood in range(3):
        # A zero-motion chunk: every accepted goal is planned, then preempted or run.
        goal = ExecuteChunk.Goal(
            chunk=make_chunk(ee_delta_rows(10, (0, 0, 0)), fresh_joint_stamp(client))
        )
        seconds, counts = _flood(client, action_client, goal)
        client.spin_for(1.0)
        rss.append(rss_mb(arm.pid))
        print(f"FAULT ExecuteChunk flood {flood + 1}: {FLOOD} answered in {seconds:.2f} s {counts}")
    print(f"FAULT ExecuteChunk flood: controller RSS after each flood {np.round(rss, 1)} MB")
    assert rss[2] - rss[1] < 20.0, rss
    assert np.abs(client.arm_positions_since(mark) - q_before).max() < 3e-3
    action_client.destroy()
    client.destroy()
