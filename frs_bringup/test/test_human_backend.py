"""The human backend end to end: typed directions on frs/human/command move the simulated arm.

sim robot, arm controller, steering and the proposer (``reasoner: human``) each run in their own
process over Fast DDS. The proposer steers with ``method: direct`` (the reference itself, the
baseline that follows a command exactly), so the arm's end effector must move the commanded way.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from rclpy.action import ActionClient
from std_msgs.msg import String

from frs_bringup.testing import RigClient, ros_args, start_arm_controller, start_sim_robot
from frs_control.kinematics import ArmKinematics
from frs_control.ros_executor import RELIABLE_QOS
from frs_msgs.action import SteerChunk
from frs_steering.package_data import shipped_checkpoint

pytestmark = pytest.mark.flaky(reruns=2)  # separate processes on 2 cores, as the full pipeline


def _ee(rig: RigClient, kinematics: ArmKinematics) -> np.ndarray:
    _, q = rig.latest_joint_state()
    return kinematics.forward(q)[0]


def test_typed_directions_drive_the_arm(node_processes, rclpy_context) -> None:  # noqa: ANN001
    start_sim_robot(node_processes, split="novel", max_episode_time=60.0)
    start_arm_controller(node_processes, watchdog_period=0.5)
    node_processes.start(
        "-m", "frs_steering.steering_node", *ros_args({"checkpoint": str(shipped_checkpoint())})
    )
    node_processes.start(
        "-m",
        "frs_vlm_bridge.proposer_node",
        *ros_args({"reasoner": "human", "method": "direct", "human_max_age": 1.0}),
    )
    rig = RigClient(rclpy_context)
    commands = rig.node.create_publisher(String, "frs/human/command", RELIABLE_QOS)
    steering = ActionClient(rig.node, SteerChunk, "frs/steer_chunk")
    kinematics = ArmKinematics()
    try:
        rig.wait_for_robot(60.0)
        rig.wait_for_controller(60.0)
        assert rig.spin_until(steering.server_is_ready, 90.0), "steering node did not come up"
        assert rig.reset_episode("push_red_yellow", seed=3).success
        rig.spin_until(lambda: commands.get_subscription_count() > 0, 60.0)

        def drive(command: str, seconds: float) -> np.ndarray:
            """EE displacement while ``command`` is repeated (it expires after 1 s)."""
            rig.spin_for(0.3)
            start = _ee(rig, kinematics)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                commands.publish(String(data=command))
                rig.spin_for(0.25)
            return _ee(rig, kinematics) - start

        left = drive("left", 2.5)
        assert left[1] > 0.03, f"'left' (+y in fr3_link0) moved the EE by {left}"
        assert abs(left[0]) < 0.5 * left[1] and abs(left[2]) < 0.5 * left[1], left
        up = drive("up", 2.0)
        assert up[2] > 0.03, f"'up' moved the EE by {up}"
        # 'defer' hands control back to the policy: once the last 'up' chunk (0.5 s) is done,
        # the arm is still driven (a stopped loop would leave only zero hold commands).
        commands.publish(String(data="defer"))
        rig.spin_for(0.7)
        window_start = time.monotonic()
        rig.spin_for(1.0)
        speeds = [
            np.abs(np.asarray(m.data)).max() for m in rig.velocity_commands.since(window_start)
        ]
        assert max(speeds, default=0.0) > 1e-3, "deferring stopped driving the arm"
    finally:
        rig.destroy()
