"""Episode runner: reset a task, let the proposer -> steering -> controller loop run, score it.

Instruction in (a task of the simulated robot's split), then the loop runs until the episode
status says done (success, failure or timeout) or the runner's own time limit passes; the
proposer is enabled only while an episode is running. Prints one line per episode and a summary.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.action import ActionClient
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import Executor
from rclpy.node import Node
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from std_srvs.srv import SetBool

from frs_bringup.stack_manager import call_service
from frs_control.ros_executor import ACTION_BURST_QOS
from frs_msgs.action import ExecuteChunk, SteerChunk
from frs_msgs.msg import EpisodeStatus
from frs_msgs.srv import ResetEpisode


@dataclass(frozen=True)
class EpisodeOutcome:
    """How one episode ended."""

    episode: int
    task: str
    seed: int
    instruction: str
    success: bool
    steps: int
    wall_s: float
    reason: str

    def line(self) -> str:
        verdict = "SUCCESS" if self.success else "failure"
        return (
            f"episode {self.episode:3d}  {self.task:22s} seed {self.seed:6d}  {verdict:8s} "
            f"steps {self.steps:3d}  "
            f"{self.wall_s:5.1f} s  ({self.reason})  '{self.instruction}'"
        )


def summarize(outcomes: list[EpisodeOutcome]) -> str:
    """One-line success rate over the outcomes."""
    if not outcomes:
        return "no episodes ran"
    wins = sum(o.success for o in outcomes)
    return f"success {wins}/{len(outcomes)} = {100.0 * wins / len(outcomes):.0f}%"


class EpisodeRunner(Node):
    """Drives episodes through the simulated robot's reset service and the proposer's switch."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003 - rclpy Node keyword arguments
        super().__init__("episode_runner", **kwargs)
        self._group = ReentrantCallbackGroup()
        self.declare_parameter(
            "episodes", 6, ParameterDescriptor(description="Episodes to run (>= 1).")
        )
        self.declare_parameter(
            "tasks",
            [""],
            ParameterDescriptor(
                description="Task names cycled over episodes; [''] = the robot's split in order."
            ),
        )
        self.declare_parameter(
            "seed", 0, ParameterDescriptor(description="Seed of the first episode (+1 each).")
        )
        self.declare_parameter(
            "seeds",
            [-1],
            ParameterDescriptor(
                description="Per-episode scene seeds cycled like tasks (overrides seed); "
                "[-1] = seed, seed + 1, ..."
            ),
        )
        self.declare_parameter(
            "episode_timeout", 20.0, ParameterDescriptor(description="Wall seconds per episode.")
        )
        self._status: EpisodeStatus | None = None
        # Best effort matches a reliable or a best-effort publisher; the status repeats.
        status_qos = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.BEST_EFFORT)
        self.create_subscription(
            EpisodeStatus,
            "frs/episode_status",
            self._on_status,
            status_qos,
            callback_group=self._group,
        )
        self._reset = self.create_client(
            ResetEpisode, "frs/reset_episode", callback_group=self._group
        )
        self._enable = self.create_client(
            SetBool, "frs/proposer/enable", callback_group=self._group
        )
        # Only to know when the stack is up: steering loads its model in on_configure.
        self._servers = [
            ActionClient(
                self, SteerChunk, "frs/steer_chunk", callback_group=self._group, **ACTION_BURST_QOS
            ),
            ActionClient(
                self,
                ExecuteChunk,
                "frs/execute_chunk",
                callback_group=self._group,
                **ACTION_BURST_QOS,
            ),
        ]

    def _on_status(self, msg: EpisodeStatus) -> None:
        self._status = msg

    def wait_for_stack(self, executor: Executor, timeout_s: float = 120.0) -> None:
        """Block until steering and the arm controller serve their actions."""
        deadline = time.monotonic() + timeout_s
        while not all(server.server_is_ready() for server in self._servers):
            if time.monotonic() > deadline:
                missing = [s._action_name for s in self._servers if not s.server_is_ready()]  # noqa: SLF001
                raise RuntimeError(f"action servers not up after {timeout_s} s: {missing}")
            executor.spin_once(timeout_sec=0.1)

    def start_episode(
        self, executor: Executor, task: str = "", seed: int = -1
    ) -> ResetEpisode.Response:
        """Reset the simulated robot to ``task`` (empty = next of its split) and ``seed``."""
        request = ResetEpisode.Request(task=task, seed=seed, template_id=-1)
        reply = call_service(executor, self._reset, request, timeout_s=30.0)
        if not reply.success:
            raise RuntimeError(f"reset refused: {reply.message}")
        self._status = None
        return reply

    def set_proposer(self, executor: Executor, enabled: bool) -> None:
        """Switch the proposer's loop on or off."""
        call_service(executor, self._enable, SetBool.Request(data=enabled), timeout_s=10.0)

    def run(self, executor: Executor) -> list[EpisodeOutcome]:
        """Run the configured episodes; the executor must hold every node of the stack."""
        episodes = int(self.get_parameter("episodes").value)
        tasks = [t for t in self.get_parameter("tasks").value if t] or [""]
        seed = int(self.get_parameter("seed").value)
        seeds = [int(s) for s in self.get_parameter("seeds").value]
        if any(s < 0 for s in seeds):
            seeds = [seed + index for index in range(episodes)]
        timeout = float(self.get_parameter("episode_timeout").value)
        outcomes: list[EpisodeOutcome] = []
        self.wait_for_stack(executor)
        for index in range(episodes):
            episode_seed = seeds[index % len(seeds)]
            reply = self.start_episode(executor, tasks[index % len(tasks)], episode_seed)
            start = time.monotonic()
            self.set_proposer(executor, True)
            while time.monotonic() - start < timeout:
                executor.spin_once(timeout_sec=0.05)
                status = self._status
                if status is not None and status.episode == reply.episode and status.done:
                    break
            self.set_proposer(executor, False)
            outcomes.append(self._outcome(reply, episode_seed, time.monotonic() - start))
            print(outcomes[-1].line(), flush=True)
        print(summarize(outcomes), flush=True)
        return outcomes

    def _outcome(self, reply: ResetEpisode.Response, seed: int, wall_s: float) -> EpisodeOutcome:
        status = self._status
        finished = status is not None and status.episode == reply.episode
        if not finished:
            reason = "no status received"
        elif not status.done:
            reason = "runner timeout"
        else:
            reason = status.reason or "done"
        return EpisodeOutcome(
            episode=reply.episode,
            task=reply.task,
            seed=seed,
            instruction=reply.instruction,
            success=bool(finished and status.success),
            steps=int(status.step) if finished else 0,
            wall_s=wall_s,
            reason=reason,
        )


def main(args: list[str] | None = None) -> None:
    """Run episodes against a stack started elsewhere (launch file or separate processes)."""
    rclpy.init(args=args)
    runner = EpisodeRunner()
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(runner)
    try:
        outcomes = runner.run(executor)
    finally:
        runner.destroy_node()
        rclpy.try_shutdown()
    sys.exit(0 if outcomes else 1)


if __name__ == "__main__":
    main()
