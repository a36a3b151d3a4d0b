"""A SteerChunk action server run as its own process by the inter-process test.

It answers each goal with values derived from the goal (refined = 2 x reference data,
noise = -reference data), so the test can tell a real cross-process answer from defaults.
"""

from __future__ import annotations

import sys

import rclpy
from rclpy.action import ActionServer
from rclpy.node import Node

from frs_msgs.action import SteerChunk
from frs_msgs.msg import PhaseTiming


class SteerEchoServer(Node):
    def __init__(self, action_name: str) -> None:
        super().__init__("steer_echo_server")
        self._server = ActionServer(self, SteerChunk, action_name, self._execute)
        self.get_logger().info(f"ready on {action_name}")
        print("READY", flush=True)

    def _execute(self, goal_handle):  # noqa: ANN001 - rclpy's ServerGoalHandle
        goal: SteerChunk.Goal = goal_handle.request
        for step in range(goal.num_steps):
            goal_handle.publish_feedback(
                SteerChunk.Feedback(phase="reverse", step=step + 1, total_steps=goal.num_steps)
            )
        source = goal.reference.chunk
        result = SteerChunk.Result(outcome=SteerChunk.Result.OUTCOME_SUCCEEDED)
        result.refined = type(source)(
            header=source.header,
            action_space=source.action_space,
            dt=source.dt,
            horizon=source.horizon,
            dim=source.dim,
            dim_names=list(source.dim_names),
            data=[2.0 * v for v in source.data],
        )
        result.refined.header.stamp = goal.observation_stamp
        result.noise.data = [-v for v in source.data]
        result.diagnostics.method = goal.method
        result.diagnostics.nfe = 2 * goal.num_steps
        result.diagnostics.timings = [PhaseTiming(phase="reverse", duration_ms=1.5)]
        goal_handle.succeed()
        return result


def main() -> None:
    rclpy.init()
    node = SteerEchoServer(sys.argv[1])
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
