"""Does the arm controller keep commanding while it plans a new chunk? (issue 14, item 3)

Starts ``frs_control.arm_controller_node`` in its own process, plays a motionless arm (joint
states at 200 Hz from this process), streams a slow ee_delta chunk and, while it runs, sends a
1000-row ee_delta chunk (the longest allowed). Prints the largest gap between consecutive
velocity commands received while the new chunk was being planned (from sending it until the
running goal reports PREEMPTED), and how long planning took. The control period is 10 ms.

    python frs_control/bench/planning_gap.py [--repeats 3] [--json] [--source-root DIR]

``--source-root`` runs the controller from another checkout's ``frs_control`` sources (e.g. an
older commit exported with ``git archive``) for before/after numbers. Runs in a random
ROS_DOMAIN_ID limited to localhost unless ROS_DOMAIN_ID is set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the frs_control package folder
sys.path.insert(0, str(_PACKAGE_ROOT))

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from action_msgs.msg import GoalStatus  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from frs_control.kinematics import REST_QPOS, ArmKinematics  # noqa: E402
from frs_control.messages import chunk_to_msg  # noqa: E402
from frs_control.ros_executor import ACTION_BURST_QOS  # noqa: E402
from frs_msgs.action import ExecuteChunk  # noqa: E402

JOINTS = [f"fr3_joint{i}" for i in range(1, 8)]
HOME_EE_POS = np.array([0.45, 0.0, 0.25])  # inside the default workspace box
HOME_EE_ROT = np.diag([1.0, -1.0, -1.0])


def _ee_chunk(rows: int, dt: float, step: float, stamp: object) -> object:
    data = np.zeros((rows, 8), dtype=np.float32)
    data[:, 1] = step  # +y, metres per row
    return chunk_to_msg(
        data,
        stamp=stamp,
        frame_id="fr3_link0",
        action_space="ee_delta",
        dt=dt,
        dim_names=(),
        normalized=False,
    )


class Bench:
    """This process's side: a motionless arm, the action client, the command recorder."""

    def __init__(self) -> None:
        self.node = rclpy.create_node("planning_gap_bench")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        kin = ArmKinematics()
        self.q = kin.inverse(HOME_EE_POS, HOME_EE_ROT, REST_QPOS, max_iters=200).qpos
        self.states = self.node.create_publisher(
            JointState, "joint_states", qos_profile_sensor_data
        )
        self.node.create_timer(0.005, self._publish_state)
        self.command_times: list[float] = []
        self.node.create_subscription(
            Float64MultiArray,
            "forward_velocity_controller/commands",
            lambda _msg: self.command_times.append(time.monotonic()),
            QoSProfile(depth=1000),
        )
        self.client = ActionClient(self.node, ExecuteChunk, "frs/execute_chunk", **ACTION_BURST_QOS)

    def _publish_state(self) -> None:
        msg = JointState(name=JOINTS, position=self.q.tolist())
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.states.publish(msg)

    def spin_until(self, predicate, timeout: float) -> bool:  # noqa: ANN001
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.002)
        return predicate()

    def send(self, chunk: object) -> tuple[object, object]:
        """(goal handle, result future) of an accepted goal."""
        goal = self.client.send_goal_async(ExecuteChunk.Goal(chunk=chunk))
        assert self.spin_until(goal.done, 10.0), "no goal response"
        handle = goal.result()
        assert handle.accepted, "goal refused"
        return handle, handle.get_result_async()

    def once(self) -> dict[str, float]:
        """One streaming chunk preempted by a 1000-row chunk; gap and planning time."""
        stamp = self.node.get_clock().now().to_msg()
        _, first_result = self.send(_ee_chunk(40, 0.1, 0.001, stamp))
        self.spin_until(lambda: False, 0.5)  # streaming
        stamp = self.node.get_clock().now().to_msg()
        sent = time.monotonic()
        second, second_result = self.send(_ee_chunk(1000, 0.01, 0.0002, stamp))
        assert self.spin_until(first_result.done, 10.0), "first chunk never ended"
        planned = time.monotonic()
        result = first_result.result().result
        assert result.outcome == ExecuteChunk.Result.OUTCOME_PREEMPTED, result.reason
        times = np.array([t for t in self.command_times if sent - 0.05 <= t <= planned + 0.05])
        gap = float(np.max(np.diff(times))) if len(times) > 1 else float("inf")
        cancel = second.cancel_goal_async()
        self.spin_until(lambda: cancel.done() and second_result.done(), 5.0)
        status = second_result.result().status if second_result.done() else None
        assert status in (GoalStatus.STATUS_CANCELED, GoalStatus.STATUS_ABORTED), status
        self.spin_until(lambda: False, 0.3)
        return {"max_gap_s": gap, "planning_s": planned - sent}


def measure(repeats: int, source_root: Path | None) -> dict[str, object]:
    """Start the controller, run ``repeats`` measurements, stop it; the numbers."""
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    roots = [str(source_root or _PACKAGE_ROOT)]
    env["PYTHONPATH"] = os.pathsep.join([*roots, *filter(None, [env.get("PYTHONPATH")])])
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    controller = subprocess.Popen(
        [sys.executable, "-m", "frs_control.arm_controller_node"]
        + ["--ros-args", "-p", "watchdog_period:=1.0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rclpy.init()
    try:
        bench = Bench()
        assert bench.client.wait_for_server(timeout_sec=30.0), "controller did not come up"
        bench.spin_until(lambda: False, 1.0)  # joint states reach the controller
        runs = [bench.once() for _ in range(repeats)]
    finally:
        controller.terminate()
        controller.wait(timeout=10)
        rclpy.try_shutdown()
    return {
        "control_period_s": 0.01,
        "max_gap_s": max(r["max_gap_s"] for r in runs),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--source-root", type=Path, help="frs_control sources to run")
    args = parser.parse_args()
    numbers = measure(args.repeats, args.source_root)
    if args.json:
        print(json.dumps(numbers))
        return
    for i, run in enumerate(numbers["runs"]):
        print(
            f"run {i}: planning {run['planning_s'] * 1e3:.0f} ms, "
            f"largest command gap {run['max_gap_s'] * 1e3:.1f} ms"
        )
    print(f"largest gap {numbers['max_gap_s'] * 1e3:.1f} ms (control period 10 ms)")


if __name__ == "__main__":
    main()
