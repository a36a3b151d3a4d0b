"""The proposer node (vlm backend) in its own process against a local OpenAI-compatible server.

This process serves the chat-completions API on 127.0.0.1, publishes joint_states and the
instruction, and stands in for the steering node and the arm controller with two tiny action
servers that record the goals they receive.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.action import ActionServer
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool

from frs_control.messages import chunk_to_msg, ns_to_stamp, stamp_to_ns
from frs_control.ros_executor import LATCHED_QOS, RELIABLE_QOS
from frs_msgs.action import ExecuteChunk, SteerChunk
from frs_msgs.msg import CoarseReference

API_KEY = "sk-test-not-a-real-key-8731"
INSTRUCTION = "put the red cube on the yellow mat"
VALID_ANSWER = {
    "defer": False,
    "direction": ["left", "down"],
    "amount": "less",
    "gripper": "close",
    "reason": "the cube is to the left, below the gripper",
}


class FakeVlm:
    """A chat-completions endpoint whose behaviour the test switches: valid, malformed JSON,
    too slow (timeout), HTTP 500 or HTTP 429 (rate limited)."""

    def __init__(self) -> None:
        self.mode = "valid"
        self.served: list[tuple[str, str]] = []  # (mode, Authorization header)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", 0))
                json.loads(self.rfile.read(length))
                mode = fake.mode
                fake.served.append((mode, self.headers.get("Authorization", "")))
                if mode == "timeout":
                    time.sleep(2.0)
                if mode in ("http_error", "rate_limited"):
                    status = 500 if mode == "http_error" else 429
                    self._reply(status, b'{"error": "overloaded"}')
                    return
                content = json.dumps(VALID_ANSWER) if mode == "valid" else "sure! {left, down"
                body = {"choices": [{"message": {"role": "assistant", "content": content}}]}
                self._reply(200, json.dumps(body).encode())

            def _reply(self, status: int, payload: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout mode)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Rig(Node):
    """Robot topics plus recording stand-ins for the steering node and the arm controller."""

    def __init__(self, context: object) -> None:
        super().__init__("proposer_test_rig", context=context)
        self.steer_goals: list[SteerChunk.Goal] = []
        self.steer_arrivals: list[int] = []  # wall-clock ns each steer goal arrived
        self.execute_goals: list[ExecuteChunk.Goal] = []
        self.references: list[CoarseReference] = []
        self.joint_stamps: set[int] = set()
        self.joints = self.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self.instruction = self.create_publisher(String, "frs/instruction", LATCHED_QOS)
        self.create_subscription(
            CoarseReference, "frs/reference", self.references.append, RELIABLE_QOS
        )
        ActionServer(self, SteerChunk, "frs/steer_chunk", self._steer)
        ActionServer(self, ExecuteChunk, "frs/execute_chunk", self._execute)
        self.enable = self.create_client(SetBool, "frs/proposer/enable")
        self.create_timer(0.05, self._publish_joints)
        self.executor_ = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor_.add_node(self)

    def _publish_joints(self) -> None:
        stamp = ns_to_stamp(time.time_ns())
        msg = JointState(
            name=[f"fr3_joint{i}" for i in range(1, 8)]
            + ["fr3_finger_joint1", "fr3_finger_joint2"],
            position=[0.0, -0.2, 0.0, -2.5, 0.0, 0.75, 0.0, 0.04, 0.04],
        )
        msg.header.stamp = stamp
        self.joint_stamps.add(stamp_to_ns(stamp))
        self.joints.publish(msg)

    def _steer(self, goal_handle) -> SteerChunk.Result:  # noqa: ANN001
        goal = goal_handle.request
        self.steer_arrivals.append(time.time_ns())
        self.steer_goals.append(goal)
        rows = np.full((10, 8), 0.01 * len(self.steer_goals), dtype=np.float32)
        result = SteerChunk.Result(outcome=SteerChunk.Result.OUTCOME_SUCCEEDED)
        result.refined = chunk_to_msg(
            rows,
            stamp=goal.observation_stamp,
            frame_id="fr3_link0",
            action_space="ee_delta",
            dt=0.1,
            dim_names=["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper", "pad0"],
            normalized=False,
        )
        goal_handle.succeed()
        return result

    def _execute(self, goal_handle) -> ExecuteChunk.Result:  # noqa: ANN001
        self.execute_goals.append(goal_handle.request)
        goal_handle.succeed()
        return ExecuteChunk.Result(outcome=ExecuteChunk.Result.OUTCOME_SUCCEEDED)

    def spin_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            self.executor_.spin_once(timeout_sec=0.02)
        return done()

    def next_goal(self, timeout_s: float = 10.0) -> SteerChunk.Goal:
        """The second steer goal from now (the first may have been proposed before a switch)."""
        return self.steer_goals[self.next_goal_index(timeout_s)]

    def next_goal_index(self, timeout_s: float = 10.0) -> int:
        start = len(self.steer_goals)
        assert self.spin_until(lambda: len(self.steer_goals) >= start + 2, timeout_s), (
            f"no new steer goals (had {start})"
        )
        return start + 1


@pytest.fixture
def vlm() -> Iterator[FakeVlm]:
    server = FakeVlm()
    yield server
    server.close()


@pytest.fixture
def rig(rclpy_context: object) -> Iterator[Rig]:
    rig = Rig(rclpy_context)
    yield rig
    rig.destroy_node()


def _start_proposer(node_processes, vlm: FakeVlm, log: Path) -> subprocess.Popen:  # noqa: ANN001
    params = {
        "reasoner": "vlm",
        "vlm_base_url": f"http://127.0.0.1:{vlm.port}/v1",
        "vlm_model": "test-vlm",
        "vlm_api_key_env": "FRS_TEST_VLM_KEY",
        "vlm_timeout_s": "1.0",
        "vlm_max_retries": "0",
    }
    args = ["-m", "frs_vlm_bridge.proposer_node", "--ros-args"]
    for name, value in params.items():
        args += ["-p", f"{name}:={value}"]
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "FRS_TEST_VLM_KEY": API_KEY},
    )
    node_processes._procs.append(proc)  # stopped (SIGINT) at teardown with the others
    return proc


def test_vlm_proposals_steer_and_execute(node_processes, vlm, rig, tmp_path) -> None:  # noqa: ANN001
    log = tmp_path / "proposer.log"
    proc = _start_proposer(node_processes, vlm, log)
    rig.instruction.publish(String(data=INSTRUCTION))

    goal = rig.next_goal(timeout_s=45.0)
    assert proc.poll() is None, log.read_text()
    ref = goal.reference
    assert goal.method == "frs" and not ref.defer
    assert ref.source == CoarseReference.SOURCE_VLM and ref.instruction == INSTRUCTION
    np.testing.assert_allclose(
        [ref.direction.x, ref.direction.y, ref.direction.z], [0.0, math.sqrt(0.5), -math.sqrt(0.5)]
    )
    assert ref.magnitude == pytest.approx(0.5) and ref.gripper == CoarseReference.GRIPPER_CLOSE
    assert ref.header.frame_id == "fr3_link0"
    assert stamp_to_ns(goal.observation_stamp) in rig.joint_stamps
    assert stamp_to_ns(ref.header.stamp) == stamp_to_ns(goal.observation_stamp)
    assert ("valid", f"Bearer {API_KEY}") in vlm.served

    assert rig.spin_until(lambda: len(rig.execute_goals) >= 2, 5.0)
    executed = rig.execute_goals[1]
    assert executed.max_points == 3  # the proposer's default execute_rows
    assert executed.chunk.action_space == "ee_delta" and (
        executed.chunk.horizon,
        executed.chunk.dim,
    ) == (
        10,
        8,
    )
    assert rig.spin_until(lambda: bool(rig.references), 2.0)
    assert rig.references[0].source == CoarseReference.SOURCE_VLM

    failing_since = time.monotonic()
    for mode in ("malformed", "timeout", "http_error", "rate_limited"):
        vlm.mode = mode
        index = rig.next_goal_index()
        goal = rig.steer_goals[index]
        assert goal.reference.defer, f"{mode}: the proposer must defer"
        assert goal.reference.direction.x == goal.reference.direction.y == 0.0
        assert any(m == mode for m, _ in vlm.served), mode
        # The deferral carries the newest observation, not the one from before the failed call
        # (after a 1 s timeout that one would be 1 s old and its chunk already in the past).
        age_s = (rig.steer_arrivals[index] - stamp_to_ns(goal.observation_stamp)) * 1e-9
        assert age_s < 0.5, f"{mode}: deferral stamped {age_s:.2f} s before it arrived"
        assert stamp_to_ns(goal.reference.header.stamp) == stamp_to_ns(goal.observation_stamp)
    failing_s = time.monotonic() - failing_since

    vlm.mode = "valid"
    assert not rig.next_goal().reference.defer

    # The enable switch stops and restarts the loop.
    assert rig.spin_until(rig.enable.service_is_ready, 5.0)
    future = rig.enable.call_async(SetBool.Request(data=False))
    assert rig.spin_until(future.done, 5.0) and future.result().success
    rig.spin_until(lambda: False, 0.3)  # a chunk in flight may still finish
    count = len(rig.steer_goals)
    rig.spin_until(lambda: False, 0.5)
    assert len(rig.steer_goals) == count, "disabled proposer kept proposing"
    future = rig.enable.call_async(SetBool.Request(data=True))
    assert rig.spin_until(future.done, 5.0)
    rig.next_goal()

    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)
    text = log.read_text()
    assert API_KEY not in text, "the API key leaked into the log"
    # Failures are operator-visible (WARN), rate limited (one per 5 s, counting the rest), and
    # the recovery is said once.
    warnings = [line for line in text.splitlines() if "[WARN]" in line and "VLM failing" in line]
    failed = sum(mode != "valid" for mode, _ in vlm.served)
    assert warnings and failed > len(warnings), text
    assert len(warnings) <= 2 + failing_s / 5.0, "\n".join(warnings)
    assert any(word in text for word in ("HTTP 500", "HTTP 429", "timed out", "valid JSON"))
    assert "VLM answering again" in text


@pytest.mark.parametrize("backend", ["scripted", "human", "none"])
def test_other_backends_construct(rclpy_context, backend: str) -> None:  # noqa: ANN001
    from rclpy.parameter import Parameter

    from frs_vlm_bridge.proposer_node import ProposerNode

    node = ProposerNode(
        context=rclpy_context, parameter_overrides=[Parameter("reasoner", value=backend)]
    )
    try:
        expected = {"scripted": "ScriptedReasoner", "human": "HumanReasoner"}
        assert type(node._reasoner).__name__ == expected.get(backend, "NoReasoner")
        if backend == "none":  # every chunk defers: the steering method acts alone
            assert node._reasoner.propose(None).defer
    finally:
        node.destroy_node()


def test_unknown_backend_is_refused(rclpy_context) -> None:  # noqa: ANN001
    from rclpy.parameter import Parameter

    from frs_vlm_bridge.proposer_node import ProposerNode

    with pytest.raises(ValueError, match="reasoner must be one of"):
        ProposerNode(context=rclpy_context, parameter_overrides=[Parameter("reasoner", value="x")])
