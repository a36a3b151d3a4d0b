"""The test side of the steering node's process tests: a fake tabletop robot and the client.

``TabletopRobot`` publishes joint_states + frs/object_states with one stamp (once, or at 50 Hz
from a timer), the instruction, sends ``SteerChunk`` goals and keeps what the node publishes
(records, diagnostics, markers). ``start_steering_node`` / ``stop_node`` run the node in its own
process with its output in a log file.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import rclpy
import torch
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose
from rclpy.action import ActionClient
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from frs_control.kinematics import REST_QPOS
from frs_control.messages import ns_to_stamp
from frs_control.ros_executor import ACTION_BURST_QOS, LATCHED_QOS, RELIABLE_QOS
from frs_msgs.action import SteerChunk
from frs_msgs.msg import ObjectStates, SteeringDiagnostics, SteeringRecord

Result = SteerChunk.Result
OBJECTS = [("red_cube", (0.5, 0.1, 0.02)), ("green_cube", (0.55, -0.1, 0.02))]
OBJECTS += [("blue_cube", (0.6, 0.0, 0.02)), ("yellow_mat", (0.45, -0.2, 0.0))]
OBJECTS += [("purple_mat", (0.6, 0.2, 0.0)), ("white_mat", (0.4, 0.25, 0.0))]
JOINT_NAMES = [f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1", "fr3_finger_joint2"]


def train_tiny_checkpoint(directory: Path) -> Path:
    """A small generalist-shaped policy (state 46 + MiniLM 384 -> 10 x 8) on random data."""
    from frs_sim.studies.generalist import GeneralistRecipe, fit_action_normalizer, make_policy
    from frs_steering.checkpoint import save_policy
    from frs_steering.train import train_flow_policy

    generator = torch.Generator().manual_seed(0)
    count, horizon, real = 256, 10, 7
    actions = torch.rand(count, horizon, real, generator=generator) * 0.1 - 0.05
    actions[..., 6] = (torch.rand(count, 1, generator=generator) > 0.5).float()
    policy = make_policy(fit_action_normalizer(actions), GeneralistRecipe(width=32, depth=1))
    observations = {
        "state": torch.randn(count, 46, generator=generator),
        "instruction": torch.randn(count, 384, generator=generator) * 0.05,
    }
    train_flow_policy(policy, observations, actions, steps=60, batch_size=64, progress=False)
    return save_policy(policy, directory)


def start_steering_node(
    log_path: Path, *params: str, params_file: Path | None = None
) -> subprocess.Popen:
    """``frs_steering.steering_node`` in its own process (``name:=value`` params, an optional
    parameter file), its output in ``log_path``."""
    args = [sys.executable, "-m", "frs_steering.steering_node", "--ros-args"]
    if params_file is not None:
        args += ["--params-file", str(params_file)]
    for param in params:
        args += ["-p", param]
    with log_path.open("w") as log:
        return subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )


@contextmanager
def serving_robot(
    log_path: Path,
    *params: str,
    params_file: Path | None = None,
    name: str = "steering_test_client",
    instruction: str | None = None,
    stream: bool = False,
    timeout: float = 60.0,
) -> Iterator[TabletopRobot]:
    """A steering node in its own process (:func:`start_steering_node`) and this process's
    robot and client, yielded once the node's action server is up; ``instruction`` is published
    (latched) first, ``stream`` starts the 50 Hz observations. Everything stops on exit."""
    proc = start_steering_node(log_path, *params, params_file=params_file)
    context = Context()
    rclpy.init(context=context)
    robot = TabletopRobot(context, name)
    robot.proc, robot.log_path = proc, log_path
    try:
        if stream:
            robot.stream_observations()
        if instruction is not None:
            robot.instruction.publish(String(data=instruction))
        up = robot.spin_until(lambda: robot.client.server_is_ready() or proc.poll(), timeout)
        assert up and proc.poll() is None, f"node did not come up:\n{log_path.read_text()}"
        yield robot
    finally:
        robot.destroy()
        context.try_shutdown()
        stop_node(proc)


def stop_node(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGINT, then SIGKILL if the node has not exited within ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class TabletopRobot:
    """This test process: fake robot topics, the steering action client, the node's outputs."""

    def __init__(self, context: Context, name: str = "steering_test_client") -> None:
        self.node = rclpy.create_node(name, context=context)
        self.proc: subprocess.Popen | None = None  # the node's process and log, if started here
        self.log_path: Path | None = None
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        node = self.node
        self.joints = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self.objects = node.create_publisher(
            ObjectStates, "frs/object_states", qos_profile_sensor_data
        )
        self.instruction = node.create_publisher(String, "frs/instruction", LATCHED_QOS)
        self.client = ActionClient(node, SteerChunk, "frs/steer_chunk", **ACTION_BURST_QOS)
        self.records: list[SteeringRecord] = []
        self.diagnostics: list[SteeringDiagnostics] = []
        self.markers: list[MarkerArray] = []
        sub = node.create_subscription
        sub(SteeringRecord, "frs/steering/record", self.records.append, RELIABLE_QOS)
        sub(SteeringDiagnostics, "frs/diagnostics", self.diagnostics.append, RELIABLE_QOS)
        sub(MarkerArray, "frs/markers", self.markers.append, RELIABLE_QOS)
        self.q = REST_QPOS.copy()
        self.stamps: list[Time] = []  # every observation stamp published

    def stream_observations(self, period_s: float = 0.02) -> None:
        """Publish an observation every ``period_s`` while this client spins (as a robot does)."""
        self.node.create_timer(period_s, lambda: self._publish(ns_to_stamp(time.time_ns())))

    def publish_observation(self, age_s: float = 0.0, objects: bool = True) -> Time:
        """Joint and object states with one stamp, ``age_s`` in the past; returns the stamp.
        ``objects=False``: joint states only, as when the object stream has gone stale."""
        stamp = self._publish(ns_to_stamp(time.time_ns() - int(age_s * 1e9)), objects)
        self.spin_until(lambda: False, 0.05)  # let the node take both in
        return stamp

    def _publish(self, stamp: Time, objects: bool = True) -> Time:
        positions = [*self.q.tolist(), 0.04, 0.04]
        # at rest, velocities included as a robot's driver sends them (policies may read them)
        joints = JointState(name=JOINT_NAMES, position=positions, velocity=[0.0] * len(positions))
        joints.header.stamp = stamp
        object_states = ObjectStates(names=[name for name, _ in OBJECTS])
        object_states.header.stamp = stamp
        object_states.header.frame_id = "fr3_link0"
        for name, (x, y, z) in OBJECTS:
            pose = Pose()
            pose.position.x, pose.position.y, pose.position.z = x, y, z
            pose.orientation.w = 1.0
            object_states.poses.append(pose)
            object_states.kinds.append(ObjectStates.KIND_TARGET if "mat" in name else 0)
        self.joints.publish(joints)
        if objects:
            self.objects.publish(object_states)
        self.stamps.append(stamp)
        return stamp

    def spin_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.01)
        return done()

    def send(self, goal: SteerChunk.Goal, feedback: list | None = None, timeout_s: float = 10.0):  # noqa: ANN201
        """Send a goal; returns the goal handle (the result is fetched with ``result``)."""
        callback = None if feedback is None else (lambda fb: feedback.append(fb.feedback))
        future = self.client.send_goal_async(goal, feedback_callback=callback)
        assert self.spin_until(future.done, timeout_s), "goal got no accept/reject answer"
        handle = future.result()
        assert handle.accepted, "the node accepts every goal (rejections come as results)"
        return handle

    def result(self, handle, timeout_s: float = 30.0) -> Result:  # noqa: ANN001
        future = handle.get_result_async()
        assert self.spin_until(future.done, timeout_s), "accepted goal got no result"
        return future.result().result

    def steer(self, goal: SteerChunk.Goal, timeout_s: float = 30.0) -> Result:
        """Send a goal and wait for its result; fails the test if either never comes."""
        return self.result(self.send(goal, timeout_s=timeout_s), timeout_s)

    def destroy(self) -> None:
        self.client.destroy()
        self.executor.remove_node(self.node)
        self.node.destroy_node()


#: What :func:`learned_reversal` predicts on every commanded translation element: 5 tanh(0.2).
REVERSED = 5.0 * math.tanh(0.2)


def learned_reversal(directory: Path, horizon: int = 10, dim: int = 8) -> Path:
    """A learned reversal for the tiny checkpoint whose output is its bias (:data:`REVERSED`
    on the translation dims), reading what the DSBC study's reads: the state, the flow's
    embedding, the reference row and the reference's one-step reversal."""
    from frs_steering.learning.noise_policy import NoisePolicy, NoisePolicyConfig, save_noise_policy
    from frs_steering.learning.observation_input import (
        POLICY_EMBEDDING,
        REFERENCE_REVERSAL,
        REFERENCE_ROW,
    )

    reads = {"state": 46, POLICY_EMBEDDING: 32, REFERENCE_ROW: 2 * dim}
    config = NoisePolicyConfig(
        reads | {REFERENCE_REVERSAL: horizon * dim},
        horizon,
        dim,
        target="full",
        noise_dims=(0, 1, 2),
    )
    net = NoisePolicy(config, seed=0)
    with torch.no_grad():
        net.mean_head.weight.zero_()
        net.mean_head.bias.fill_(0.2)
    return save_noise_policy(net, directory)


def constant_reference_policy(directory: Path, state_dim: int = 46) -> Path:
    """A reference policy that always proposes "+x, less, gripper kept" (output = its bias),
    its magnitude classified among the levels "less" and "more"."""
    from frs_steering.learning.reference_policy import (
        ReferencePolicy,
        ReferencePolicyConfig,
        save_reference_policy,
    )

    config = ReferencePolicyConfig(
        {"state": state_dim, "instruction": 384}, magnitude_levels=(0.5, 1.0)
    )
    net = ReferencePolicy(config)
    bias = torch.zeros(net.output.out_features)
    bias[0] = -5.0  # do not defer
    bias[1] = 5.0  # gripper: keep
    bias[4:13] = torch.tensor([0, 0, 5.0, 0, 5.0, 0, 0, 5.0, 0])  # x: +1, y: 0, z: 0
    bias[13] = 5.0  # magnitude: the level 0.5, "less"
    with torch.no_grad():
        net.output.weight.zero_()
        net.output.bias.copy_(bias)
    return save_reference_policy(net, directory)
