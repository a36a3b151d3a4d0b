"""A SteerChunk goal, its feedback and its result cross two OS processes over Fast DDS."""

from __future__ import annotations

import time
from pathlib import Path

import rclpy
from builtin_interfaces.msg import Time
from rclpy.action import ActionClient
from rclpy.node import Node

from frs_msgs.action import SteerChunk

SERVER_SCRIPT = Path(__file__).with_name("steer_echo_server.py")


def _spin_until(node: Node, context: object, done, timeout_s: float) -> None:  # noqa: ANN001
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    executor.remove_node(node)


def test_goal_and_result_cross_processes(node_processes, rclpy_context) -> None:  # noqa: ANN001
    server = node_processes.start(str(SERVER_SCRIPT), "/frs_test/steer_chunk")
    node = Node("steer_ipc_client", context=rclpy_context)
    client = ActionClient(node, SteerChunk, "/frs_test/steer_chunk")
    try:
        _spin_until(node, rclpy_context, lambda: client.server_is_ready(), timeout_s=20.0)
        assert client.server_is_ready(), f"server never came up: {server.poll()=}"

        goal = SteerChunk.Goal(method=SteerChunk.Goal.METHOD_FRS, num_steps=10, seed=3)
        goal.observation_stamp = Time(sec=12, nanosec=345)
        chunk = goal.reference.chunk
        chunk.horizon, chunk.dim, chunk.dt = 2, 3, 0.1
        chunk.dim_names = ["dx", "dy", "dz"]
        chunk.data = [0.5, -1.0, 0.25, 1.5, 0.0, -0.75]
        feedback: list[SteerChunk.Feedback] = []

        send = client.send_goal_async(
            goal, feedback_callback=lambda fb: feedback.append(fb.feedback)
        )
        _spin_until(node, rclpy_context, send.done, timeout_s=10.0)
        handle = send.result()
        assert handle is not None and handle.accepted
        result_future = handle.get_result_async()
        _spin_until(node, rclpy_context, result_future.done, timeout_s=10.0)
        result = result_future.result().result
        # Feedback travels on its own topic and may trail the result by a moment.
        _spin_until(node, rclpy_context, lambda: len(feedback) >= 10, timeout_s=5.0)

        assert result.outcome == SteerChunk.Result.OUTCOME_SUCCEEDED
        assert list(result.refined.data) == [2.0 * v for v in chunk.data]
        assert list(result.noise.data) == [-v for v in chunk.data]
        assert (result.refined.horizon, result.refined.dim) == (2, 3)
        assert list(result.refined.dim_names) == ["dx", "dy", "dz"]
        assert (result.refined.header.stamp.sec, result.refined.header.stamp.nanosec) == (12, 345)
        assert result.diagnostics.method == "frs"
        assert result.diagnostics.nfe == 20
        assert result.diagnostics.timings[0].phase == "reverse"
        assert [fb.step for fb in feedback] == list(range(1, 11))
    finally:
        client.destroy()
        node.destroy_node()
