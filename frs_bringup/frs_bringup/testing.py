"""Helpers for tests that run the simulated rig (sim robot + arm controller) as separate processes.

``start_sim_robot`` / ``start_arm_controller`` start each node in its own process through any
starter with a ``start(*args)`` method (the root conftest's ``node_processes`` fixture);
``RigClient`` is the test side: it spins its own node with a ``spin_once`` loop, resets episodes,
sends ExecuteChunk goals, calls the e-stop services and records what the controller commands.
Used by the sim-robot and arm-controller tests and meant for later full-pipeline tests.
"""

from __future__ import annotations

import contextlib
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.action import ActionClient
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.task import Future
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from frs_control.messages import chunk_to_msg, joint_positions, stamp_to_seconds
from frs_control.ros_executor import ACTION_BURST_QOS
from frs_msgs.action import ExecuteChunk
from frs_msgs.msg import ActionChunk, EpisodeStatus, ObjectStates
from frs_msgs.srv import ResetEpisode

ARM_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))
EE_DELTA_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper", "pad0")


class ProcessStarter(Protocol):
    """Anything that starts ``python <args>`` as a process (e.g. conftest's node_processes)."""

    def start(self, *args: str, env: dict[str, str] | None = None) -> Any: ...


def run_script(script: Path, *args: str, timeout: float = 240.0) -> str:
    """Run ``python script *args`` to completion (a bench, as a user runs it) and return its
    stdout; a non-zero exit fails the test with the tail of its output."""
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout


def ros_args(params: dict[str, object]) -> list[str]:
    """``--ros-args -p name:=value`` for each parameter (bools, numbers, lists, strings)."""

    def fmt(value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return repr(value)
        if isinstance(value, list | tuple):
            return "[" + ",".join(fmt(v) for v in value) + "]"
        return str(value)

    args = ["--ros-args"]
    for name, value in params.items():
        args += ["-p", f"{name}:={fmt(value)}"]
    return args


def start_sim_robot(starter: ProcessStarter, **params: object) -> Any:
    """Start ``frs_sim.sim_robot_node`` with the given parameters in its own process."""
    return starter.start("-m", "frs_sim.sim_robot_node", *ros_args(params))


def start_arm_controller(starter: ProcessStarter, **params: object) -> Any:
    """Start ``frs_control.arm_controller_node`` (autostarted) in its own process."""
    return starter.start("-m", "frs_control.arm_controller_node", *ros_args(params))


def start_rig(
    starter: ProcessStarter,
    context: Context,
    controller: dict[str, object] | None = None,
    sim: dict[str, object] | None = None,
    timeout: float = 30.0,
) -> RigClient:
    """Start the sim robot and the arm controller, each in its own process; a ready client."""
    start_sim_robot(starter, **(sim or {}))
    start_arm_controller(starter, **(controller or {}))
    client = RigClient(context)
    client.wait_for_robot(timeout)
    client.wait_for_controller(timeout)
    return client


def shifted_stamp(stamp: Any, seconds: float) -> Time:
    """``stamp`` moved by ``seconds`` (negative = earlier)."""
    t = stamp_to_seconds(stamp) + seconds
    sec = math.floor(t)
    return Time(sec=sec, nanosec=min(int(round((t - sec) * 1e9)), 999_999_999))


def make_chunk(
    rows: np.ndarray,
    stamp: Any,
    dt: float = 0.1,
    action_space: str = "ee_delta",
    frame_id: str = "fr3_link0",
    dim_names: Sequence[str] | None = None,
) -> ActionChunk:
    """An ActionChunk of real-unit ``rows`` (horizon, dim) computed from an observation at
    ``stamp``."""
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float32))
    if dim_names is None:
        dim_names = EE_DELTA_NAMES if rows.shape[1] == len(EE_DELTA_NAMES) else ()
    return chunk_to_msg(
        rows,
        stamp=stamp,
        frame_id=frame_id,
        action_space=action_space,
        dt=dt,
        dim_names=dim_names,
        normalized=False,
    )


@dataclass
class Recorded:
    """Messages a RigClient subscription received, with receive times (test clock)."""

    messages: list[Any] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def since(self, t: float) -> list[Any]:
        """Messages received at or after ``t`` (``time.monotonic()`` seconds)."""
        return [m for m, tm in zip(self.messages, self.times, strict=True) if tm >= t]

    def clear(self) -> None:
        """Forget everything received so far."""
        self.messages.clear()
        self.times.clear()


@dataclass
class GoalOutcome:
    """What an ExecuteChunk goal ended with."""

    accepted: bool
    status: int
    result: ExecuteChunk.Result | None
    feedback: list[ExecuteChunk.Feedback]


class RigClient:
    """Test-side node: resets episodes, sends chunks, records the controller's commands."""

    def __init__(self, context: Context, name: str = "rig_client") -> None:
        import rclpy

        self.node = rclpy.create_node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        node = self.node
        self.joint_states = Recorded()
        self.object_states = Recorded()
        self.episode_status = Recorded()
        self.instructions = Recorded()
        self.velocity_commands = Recorded()
        self.trajectory_commands = Recorded()
        self.gripper_commands = Recorded()
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        subscriptions: list[tuple[type, str, Recorded, QoSProfile]] = [
            (JointState, "joint_states", self.joint_states, qos_profile_sensor_data),
            (ObjectStates, "frs/object_states", self.object_states, qos_profile_sensor_data),
            (EpisodeStatus, "frs/episode_status", self.episode_status, reliable),
            (String, "frs/instruction", self.instructions, latched),
            (
                Float64MultiArray,
                "forward_velocity_controller/commands",
                self.velocity_commands,
                reliable,
            ),
            (
                JointTrajectory,
                "joint_trajectory_controller/joint_trajectory",
                self.trajectory_commands,
                reliable,
            ),
            (Float64MultiArray, "gripper_controller/commands", self.gripper_commands, reliable),
        ]
        for msg_type, topic, store, qos in subscriptions:
            node.create_subscription(msg_type, topic, self._recorder(store), qos)
        self.execute_client = ActionClient(
            node, ExecuteChunk, "frs/execute_chunk", **ACTION_BURST_QOS
        )
        self.reset_client = node.create_client(ResetEpisode, "frs/reset_episode")
        self.estop_client = node.create_client(Trigger, "frs/estop")
        self.reset_estop_client = node.create_client(Trigger, "frs/reset_estop")

    @staticmethod
    def _recorder(store: Recorded) -> Callable[[Any], None]:
        def record(msg: Any) -> None:
            store.messages.append(msg)
            store.times.append(time.monotonic())

        return record

    # ------------------------------------------------------------------ spinning
    def spin_for(self, seconds: float) -> None:
        """Process callbacks for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.01, max(0.0, end - time.monotonic())))

    def spin_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Process callbacks until ``predicate()`` holds; False on timeout."""
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                return False
            self.executor.spin_once(timeout_sec=0.01)
        return True

    def wait_future(self, future: Future, timeout: float) -> Any:
        """Spin until ``future`` is done; its result (raises TimeoutError)."""
        if not self.spin_until(future.done, timeout):
            raise TimeoutError("future not done in time")
        return future.result()

    # ------------------------------------------------------------------ readiness
    def wait_for_robot(self, timeout: float = 20.0) -> None:
        """Until joint states flow and the reset service is up (sim robot ready)."""
        ok = self.spin_until(lambda: len(self.joint_states.messages) > 2, timeout)
        if not ok or not self.reset_client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError("simulated robot did not come up")

    def wait_for_controller(self, timeout: float = 20.0) -> None:
        """Until the ExecuteChunk server and the e-stop services are available."""
        end = time.monotonic() + timeout
        while not self.execute_client.server_is_ready():
            if time.monotonic() > end:
                raise TimeoutError("arm controller action server did not come up")
            self.executor.spin_once(timeout_sec=0.05)
        for client in (self.estop_client, self.reset_estop_client):
            if not client.wait_for_service(timeout_sec=max(0.1, end - time.monotonic())):
                raise TimeoutError(f"{client.srv_name} did not come up")
        # Handshake: the controller checks its readiness (active, joint states flowing) before
        # validating a chunk, so a probe rejected for its action space proves it is ready.
        probe = make_chunk(np.zeros((1, 1)), Time(sec=1), action_space="readiness_probe")
        while True:
            reason = self.execute(probe, timeout=max(1.0, end - time.monotonic())).result.reason
            if "readiness_probe" in reason:
                return
            if time.monotonic() > end:
                raise TimeoutError(f"arm controller not ready: {reason}")
            self.spin_for(0.1)

    # ------------------------------------------------------------------ state
    def latest_joint_state(self) -> tuple[Any, np.ndarray]:
        """(header stamp, 7 arm joint positions) of the newest joint_states message."""
        msg = self.joint_states.messages[-1]
        return msg.header.stamp, joint_positions(msg, ARM_JOINTS)

    def arm_positions_since(self, t: float) -> np.ndarray:
        """(n, 7) arm joint positions of joint_states received since monotonic time ``t``."""
        rows = [joint_positions(msg, ARM_JOINTS) for msg in self.joint_states.since(t)]
        return np.array(rows).reshape(-1, 7)

    # ------------------------------------------------------------------ calls
    def reset_episode(
        self, task: str = "", seed: int = -1, template_id: int = -1, timeout: float = 10.0
    ) -> ResetEpisode.Response:
        """Call frs/reset_episode."""
        request = ResetEpisode.Request(task=task, seed=seed, template_id=template_id)
        return self.wait_future(self.reset_client.call_async(request), timeout)

    def trigger(self, client_name: str, timeout: float = 5.0) -> Trigger.Response:
        """Call ``estop`` or ``reset_estop``."""
        client = {"estop": self.estop_client, "reset_estop": self.reset_estop_client}[client_name]
        return self.wait_future(client.call_async(Trigger.Request()), timeout)

    def send_chunk(self, chunk: ActionChunk, max_points: int = 0) -> tuple[Any, list]:
        """Send a goal; returns (goal handle future, feedback list that fills while spinning)."""
        feedback: list[ExecuteChunk.Feedback] = []
        future = self.execute_client.send_goal_async(
            ExecuteChunk.Goal(chunk=chunk, max_points=max_points),
            feedback_callback=lambda fb: feedback.append(fb.feedback),
        )
        return future, feedback

    def finish(self, goal_future: Future, feedback: list, timeout: float = 10.0) -> GoalOutcome:
        """Wait for a goal sent with ``send_chunk`` to end."""
        handle = self.wait_future(goal_future, timeout)
        if not handle.accepted:
            return GoalOutcome(False, 0, None, feedback)
        response = self.wait_future(handle.get_result_async(), timeout)
        return GoalOutcome(True, response.status, response.result, feedback)

    def execute(
        self, chunk: ActionChunk, max_points: int = 0, timeout: float = 10.0
    ) -> GoalOutcome:
        """Send a chunk and wait for its result."""
        return self.finish(*self.send_chunk(chunk, max_points), timeout=timeout)

    def destroy(self) -> None:
        """Destroy the client node."""
        self.execute_client.destroy()
        self.executor.remove_node(self.node)
        self.node.destroy_node()


#: Seconds one hostile-input case may take to be read or refused (a hang is a bug).
CASE_SECONDS = 10.0


@contextlib.contextmanager
def time_bound(seconds: float = CASE_SECONDS) -> Iterator[None]:
    """Fail (TimeoutError) if the block runs longer than ``seconds`` (main thread, SIGALRM)."""

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"case ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------- load (issue 14)
#: Most busy-loop processes :func:`busy_load` starts per CPU core (a bound, not a target).
MAX_BUSY_PER_CPU = 4
_BUSY_LOOP = (
    "import ctypes, signal, sys, time\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the test\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end:\n"
    "    pass\n"
)


@contextlib.contextmanager
def busy_load(processes: int, seconds: float) -> Iterator[list[Any]]:
    """``processes`` busy-loop processes at normal priority, each wanting a whole core.

    Bounded in count (at most :data:`MAX_BUSY_PER_CPU` per core) and in time: each exits by
    itself after ``seconds``, dies with the process that started it, and is killed when the
    block ends, whatever happens inside it.
    """
    import os
    import subprocess
    import sys

    bound = MAX_BUSY_PER_CPU * (os.cpu_count() or 1)
    if not 0 <= processes <= bound:
        raise ValueError(f"busy_load: {processes} processes; 0..{bound} allowed")
    if not 0.0 < seconds <= 3600.0:
        raise ValueError(f"busy_load: {seconds} s; (0, 3600] allowed")
    started: list[subprocess.Popen] = []
    try:
        for _ in range(processes):
            started.append(
                subprocess.Popen(
                    [sys.executable, "-c", _BUSY_LOOP, repr(float(seconds))],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
        for process in started:
            process.wait(timeout=10)


def start_pipeline(
    starter: ProcessStarter,
    *,
    method: str = "frs",
    sim: dict[str, object] | None = None,
    controller: dict[str, object] | None = None,
    steering: dict[str, object] | None = None,
    proposer: dict[str, object] | None = None,
) -> dict[str, Any]:
    """Start the whole simulated stack (sim robot, arm controller, steering with the shipped
    generalist, proposer with the scripted reasoner), each node in its own process.

    Each process gets its role's priority from the ``sim`` stack (:func:`apply_niceness`), as
    ``sim_demo`` and the launch files give it. Returns the processes by node name; the proposer
    starts disabled (the episode runner switches it on per episode).
    """
    from frs_bringup.stacks import STACKS, apply_niceness
    from frs_steering.package_data import shipped_checkpoint

    processes = {
        "sim_robot": start_sim_robot(starter, **{"split": "novel", **(sim or {})}),
        "arm_controller": start_arm_controller(
            starter, **{"watchdog_period": 0.5, **(controller or {})}
        ),
        "steering": start_steering(
            starter, **{"checkpoint": str(shipped_checkpoint()), **(steering or {})}
        ),
        "proposer": start_proposer(
            starter,
            **{
                "reasoner": "scripted",
                "method": method,
                "start_enabled": False,
                **(proposer or {}),
            },
        ),
    }
    for name, process in processes.items():  # the priorities sim_demo and launch give them
        apply_niceness(process.pid, STACKS["sim"].node(name).nice)
    return processes


def longest_gap(times: Sequence[float], start: float, end: float) -> float:
    """Longest interval within [start, end] that holds none of ``times`` (s; ``end - start``
    when none falls inside)."""
    inside = sorted(t for t in times if start <= t <= end)
    edges = [start, *inside, end]
    return max((b - a for a, b in zip(edges, edges[1:], strict=False)), default=0.0)


# ---------------------------------------------------------------------- fault tests
def start_steering(starter: ProcessStarter, **params: object) -> Any:
    """Start ``frs_steering.steering_node`` (autostarted) in its own process."""
    return starter.start("-m", "frs_steering.steering_node", *ros_args(params))


def start_proposer(starter: ProcessStarter, **params: object) -> Any:
    """Start ``frs_vlm_bridge.proposer_node`` in its own process."""
    return starter.start("-m", "frs_vlm_bridge.proposer_node", *ros_args(params))


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (``VmRSS`` of ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise ValueError(f"no VmRSS for process {pid}")


class OutputLog:
    """Reads a process's piped text output on a thread and keeps it (conftest's
    ``node_processes`` gives each process one as ``process.log``)."""

    def __init__(self, process: Any) -> None:
        import threading

        self._process = process
        self._lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            self._lines.append(line)

    def text(self) -> str:
        """Everything read so far."""
        return "".join(self._lines)

    def wait(self, timeout: float) -> str:
        """Everything the process wrote, once it has exited (``communicate``'s place: the pipe
        is this reader's)."""
        self._process.wait(timeout=timeout)
        self._thread.join(timeout=timeout)
        return self.text()


def last_moving_time(
    messages: Sequence[Any], times: Sequence[float], threshold: float = 1e-9
) -> float | None:
    """Receive time of the last velocity command with any |value| above ``threshold``."""
    moving = [t for m, t in zip(messages, times, strict=True) if np.abs(m.data).max() > threshold]
    return moving[-1] if moving else None


#: rad/s: an arm joint faster than this moves.
MOVING_SPEED = 0.02
#: rad: motion within this of where the arm finally rests is settling (the hold's PD absorbing
#: momentum or contact), not motion the robot was still commanded to make.
SETTLED_BAND = 0.005


def robot_still_after(client: RigClient, process: Any, sig: int, watch_s: float) -> float:
    """Send ``sig`` to ``process`` (e.g. the controller), watch the robot for ``watch_s``; the
    seconds (robot clock) from the signal until the last joint_states sample with an arm joint
    faster than :data:`MOVING_SPEED` while still more than :data:`SETTLED_BAND` from the pose
    the arm rests in at the end of the watch (0.0 if none after the signal)."""
    sent = time.time()
    process.send_signal(sig)
    client.spin_for(watch_s)
    after = [m for m in client.joint_states.messages if stamp_to_seconds(m.header.stamp) >= sent]
    if not after:
        raise RuntimeError(f"no joint_states within {watch_s} s after the signal: cannot tell")
    rest = np.asarray(after[-1].position[:7])
    moving = [
        stamp_to_seconds(m.header.stamp)
        for m in after
        if np.abs(m.velocity[:7]).max() > MOVING_SPEED
        and np.abs(np.asarray(m.position[:7]) - rest).max() > SETTLED_BAND
    ]
    return moving[-1] - sent if moving else 0.0


def fresh_joint_stamp(client: RigClient, timeout: float = 2.0) -> Any:
    """Stamp of a joint_states message received just now (an observation to compute from)."""
    client.joint_states.clear()
    if not client.spin_until(lambda: len(client.joint_states.messages) > 0, timeout):
        raise TimeoutError("no joint_states")
    return client.latest_joint_state()[0]


def ee_delta_rows(n: int, step: Sequence[float], gripper: float = 0.0) -> np.ndarray:
    """``n`` ee_delta rows (8 columns) each moving the end effector by ``step`` (m)."""
    rows = np.zeros((n, len(EE_DELTA_NAMES)))
    rows[:, 0:3] = step
    rows[:, 6] = gripper
    return rows


def wait_for_steering(rig: RigClient, timeout: float = 120.0, probe_timeout: float = 10.0) -> None:
    """Until the steering node is configured AND active (its configure can take tens of seconds
    on a loaded machine): a probe goal with an unknown method must be refused for that method,
    not because the node is not active. Episodes started earlier would count its start-up as
    steering failures.

    A probe unanswered within ``probe_timeout`` is sent again: a request goes only to the servers
    matched when it was sent, and the node's own server may be matched just after."""
    from frs_control.ros_executor import ACTION_BURST_QOS
    from frs_msgs.action import SteerChunk

    client = ActionClient(rig.node, SteerChunk, "frs/steer_chunk", **ACTION_BURST_QOS)
    end = time.monotonic() + timeout
    try:
        reason = "no action server"
        while time.monotonic() < end:
            if not client.server_is_ready():
                rig.spin_for(0.1)
                continue
            sent = client.send_goal_async(SteerChunk.Goal(method="readiness_probe"))
            if not rig.spin_until(sent.done, min(probe_timeout, max(0.1, end - time.monotonic()))):
                reason = "a probe goal got no answer"
                continue
            handle = sent.result()
            if handle.accepted:
                result = rig.wait_future(handle.get_result_async(), 30.0).result
                reason = result.reason
                if "readiness_probe" in reason:
                    return
            rig.spin_for(0.2)
        raise TimeoutError(f"steering node not active after {timeout} s: {reason}")
    finally:
        client.destroy()
