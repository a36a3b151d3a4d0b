"""What ROS adds to a steering call: observation stamp -> refined chunk, action vs in-process.

Starts the steering node in its own process (Fast DDS, localhost), then per chunk publishes
joint_states + frs/object_states with a fresh stamp and immediately sends an ``frs`` goal for
that stamp; latency is result arrival minus the observation stamp. The same ``steer()`` call
(same policy, observation construction and reference building) runs in this process for the
in-process figure. Prints medians and the overhead (target < 2 ms median). Not a test.

    PYTHONPATH=frs_steering:frs_vlm_bridge .venv/bin/python frs_steering/bench/bench_ros_overhead.py
        [--chunks 200] [--checkpoint DIR] [--feedback/--no-feedback] [--markers/--no-markers]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rclpy
import torch
from geometry_msgs.msg import Pose
from rclpy.action import ActionClient
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from frs_msgs.action import SteerChunk
from frs_msgs.msg import ObjectStates
from frs_steering.checkpoint import load_policy, save_policy
from frs_steering.kinematics import REST_QPOS, ArmKinematics
from frs_steering.reasoning import CoarseProposal, Source
from frs_steering.reference import CartesianLayout, cartesian_reference
from frs_steering.ros_messages import ns_to_stamp
from frs_steering.sim.env import tabletop_state, yaw_of_rotation
from frs_steering.sim.generalist import GeneralistRecipe, fit_action_normalizer, make_policy
from frs_steering.sim.instructions import embed_instruction
from frs_steering.steer import steer
from frs_steering.steering_node import LATCHED_QOS, shipped_checkpoint

OBJECTS = [
    ("red_cube", (0.5, 0.1, 0.02)),
    ("green_cube", (0.55, -0.1, 0.02)),
    ("blue_cube", (0.6, 0.0, 0.02)),
    ("yellow_mat", (0.45, -0.2, 0.0)),
    ("purple_mat", (0.6, 0.2, 0.0)),
    ("white_mat", (0.4, 0.25, 0.0)),
]
INSTRUCTION = "put the red cube on the yellow mat"
JOINT_NAMES = [f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1", "fr3_finger_joint2"]


def _checkpoint(path: str | None, scratch: Path) -> Path:
    """The given or shipped checkpoint, else an untrained generalist-sized one (same compute)."""
    if path:
        return Path(path)
    if shipped_checkpoint().is_dir():
        return shipped_checkpoint()
    actions = torch.rand(64, 10, 7) * 0.1 - 0.05
    print("no shipped generalist: timing an untrained policy of the generalist's size")
    return save_policy(make_policy(fit_action_normalizer(actions), GeneralistRecipe()), scratch)


def _in_process(checkpoint: Path, chunks: int) -> list[float]:
    """Seconds per chunk for the node's work without ROS: observation, reference, steer()."""
    policy = load_policy(checkpoint)
    kinematics = ArmKinematics()
    embedding = torch.tensor(embed_instruction(INSTRUCTION)).reshape(1, -1)
    objects = np.array([p for _, p in OBJECTS[:3]])
    targets = np.array([p for _, p in OBJECTS[3:]])
    proposal = CoarseProposal(source=Source.SCRIPTED, direction=[0.0, 1.0, 0.0])
    times = []
    for i in range(chunks + 10):
        start = time.perf_counter()
        ee, rot = kinematics.forward(REST_QPOS)
        state = tabletop_state(
            ee, yaw_of_rotation(rot), 1.0, REST_QPOS, objects, np.zeros(3), targets
        )
        observation = {"state": torch.from_numpy(state).reshape(1, -1), "instruction": embedding}
        ref = cartesian_reference(policy.spec, CartesianLayout(), proposal, current_gripper=0.0)
        steer(
            policy,
            ref.chunk,
            observation=observation,
            mask=ref.mask,
            reference_normalized=True,
            generator=torch.Generator().manual_seed(i),
        )
        if i >= 10:  # warm-up
            times.append(time.perf_counter() - start)
    return times


def _over_ros(node: Node, chunks: int) -> tuple[list[float], list[float], int]:
    """Seconds from observation stamp to result, the node's own seconds per goal (its
    diagnostics.total_ms), and how many goals came back rejected."""
    executor = rclpy.executors.SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    joints = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
    objects = node.create_publisher(ObjectStates, "frs/object_states", qos_profile_sensor_data)
    instruction = node.create_publisher(String, "frs/instruction", LATCHED_QOS)
    client = ActionClient(node, SteerChunk, "frs/steer_chunk")

    def spin_until(done, timeout: float) -> bool:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)  # returns as soon as work arrives
        return done()

    if not spin_until(client.server_is_ready, 60.0):
        raise RuntimeError("steering node did not come up")
    spin_until(lambda: joints.get_subscription_count() > 0, 10.0)
    instruction.publish(String(data=INSTRUCTION))
    object_msg = ObjectStates(names=[n for n, _ in OBJECTS])
    object_msg.header.frame_id = "fr3_link0"
    for _, (x, y, z) in OBJECTS:
        pose = Pose()
        pose.position.x, pose.position.y, pose.position.z = x, y, z
        pose.orientation.w = 1.0
        object_msg.poses.append(pose)
    joint_msg = JointState(name=JOINT_NAMES, position=[*REST_QPOS.tolist(), 0.04, 0.04])
    times, inside, rejected = [], [], 0
    for i in range(chunks + 10):
        stamp_ns = time.time_ns()
        stamp = ns_to_stamp(stamp_ns)
        joint_msg.header.stamp = object_msg.header.stamp = stamp
        joints.publish(joint_msg)
        objects.publish(object_msg)
        goal = SteerChunk.Goal(method="frs", observation_stamp=stamp, seed=i)
        goal.reference.direction.y = 1.0
        goal.reference.magnitude = 1.0
        sent = client.send_goal_async(goal)
        spin_until(sent.done, 10.0)
        result_future = sent.result().get_result_async()
        spin_until(result_future.done, 10.0)
        result = result_future.result().result
        elapsed = (time.time_ns() - stamp_ns) * 1e-9
        if result.outcome != SteerChunk.Result.OUTCOME_SUCCEEDED:
            rejected += 1
            if "instruction" in result.reason or i < 10:
                time.sleep(0.2)  # the node is still embedding the first instruction
            continue
        if i >= 10:
            times.append(elapsed)
            inside.append(result.diagnostics.total_ms * 1e-3)
    return times, inside, rejected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--feedback", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--markers", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(102, 200)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = _checkpoint(args.checkpoint, Path(scratch) / "policy")
        local = _in_process(checkpoint, args.chunks)
        params = [
            f"checkpoint:={checkpoint}",
            f"publish_feedback:={str(args.feedback).lower()}",
            f"publish_markers:={str(args.markers).lower()}",
        ]
        command = [sys.executable, "-m", "frs_steering.steering_node", "--ros-args"]
        for param in params:
            command += ["-p", param]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rclpy.init()
        node = Node("bench_ros_overhead")
        try:
            remote, inside, rejected = _over_ros(node, args.chunks)
        finally:
            node.destroy_node()
            rclpy.try_shutdown()
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=5)

    local_ms = statistics.median(local) * 1e3
    remote_ms = statistics.median(remote) * 1e3
    print(f"checkpoint {checkpoint}")
    print(f"feedback {args.feedback}, markers {args.markers}, {len(remote)} chunks over ROS")
    print(f"in-process steer (obs + reference + frs): median {local_ms:.2f} ms")
    print(f"ROS action, stamp -> refined chunk:       median {remote_ms:.2f} ms")
    inside_ms = statistics.median(inside) * 1e3
    print(f"  of which inside the node's execute callback: median {inside_ms:.2f} ms")
    p90 = float(np.percentile(remote, 90)) * 1e3
    print(f"  p90 {p90:.2f} ms, {rejected} goals not served (rejected / warm-up)")
    overhead = remote_ms - local_ms
    verdict = "meets" if overhead < 2.0 else "misses"
    print(f"overhead: median {overhead:.2f} ms ({verdict} the < 2 ms target)")


if __name__ == "__main__":
    main()
