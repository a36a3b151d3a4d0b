"""The simulated stack split over a network link, episodes under link conditions, audited.

``python -m frs_bringup.network_trials --episodes 3 --json runs/network.json`` creates the two
namespaces of :mod:`frs_bringup.netns` and starts the rig as it is split on real hardware:

- policy host: the steering node (shipped generalist) and the proposer (scripted reasoner, FRS);
- robot PC: the simulated robot, the arm controller, and this process (episode runner, auditor,
  link conditions).

Every condition (``clean``, ``drop5``, ``drop20``, ``cap1mbit``, ``cap256kbit``, ``cut``) runs
``--episodes`` episodes on novel pushes. For each it reports the success rate and the audit of
every ExecuteChunk goal the proposer sent (its chunk stamp is logged on the policy host, its
acceptance, feedback and end are observed on the robot PC): rows accepted although they were due
before the goal reached the controller (stale rows; must be 0) and how long a stream outlived its
chunk's last row. ``cut`` takes the link down while a chunk streams, for ``--cut-seconds``, in every
episode: the arm must stop within the chunk's remaining rows + ``chunk_timeout`` (the controller's
watchdog for a missing next chunk) and be driven again after the link returns.

Prints one table; ``--json`` writes the numbers. The robot PC's and the policy host's node logs go
to ``--log-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from frs_bringup.netns import RigLink, dds_env, enter_namespaces

CONDITIONS = ("clean", "drop5", "drop20", "cap1mbit", "cap256kbit", "cut")
NOVEL_TASKS = ("push_red_yellow", "push_green_purple", "push_blue_white")
WATCHDOG_PERIOD = 0.5  # s, arm controller (joint states)
CHUNK_TIMEOUT = 0.5  # s, arm controller (after a chunk's last row)
LATE_TOLERANCE = 0.02  # s, arm controller default
EXECUTE_ROWS = 5  # proposer default
STATUS_EXECUTING, TERMINAL = 2, {4: "succeeded", 5: "canceled", 6: "aborted"}
GOAL_LOG_ENV = "FRS_GOAL_LOG"


# ---------------------------------------------------------------------- the goal log (policy host)
def run_logged_proposer(argv: Sequence[str]) -> None:
    """The proposer node, with each ExecuteChunk goal it sends logged to ``$FRS_GOAL_LOG``.

    One JSON line per goal: its UUID (chosen here and passed to rclpy), the chunk's stamp, dt,
    horizon and ``max_points``, and the send time. Nothing else about the node changes.
    """
    from rclpy.action import ActionClient
    from unique_identifier_msgs.msg import UUID

    from frs_control.messages import stamp_to_seconds
    from frs_msgs.action import ExecuteChunk
    from frs_vlm_bridge import proposer_node

    log = Path(os.environ[GOAL_LOG_ENV]).open("a", buffering=1)  # noqa: SIM115 - process-long
    send = ActionClient.send_goal_async

    def logged(self, goal, feedback_callback=None, goal_uuid=None):  # noqa: ANN001, ANN202
        if isinstance(goal, ExecuteChunk.Goal):
            goal_uuid = goal_uuid or UUID(uuid=list(uuid.uuid4().bytes))
            record = {
                "goal": bytes(goal_uuid.uuid).hex(),
                "stamp": stamp_to_seconds(goal.chunk.header.stamp),
                "dt": float(goal.chunk.dt),
                "horizon": int(goal.chunk.horizon),
                "max_points": int(goal.max_points),
                "sent": time.time(),
            }
            log.write(json.dumps(record) + "\n")
        return send(self, goal, feedback_callback, goal_uuid)

    ActionClient.send_goal_async = logged  # type: ignore[method-assign]
    proposer_node.main(list(argv))


# ---------------------------------------------------------------------- the audit (pure)
@dataclass
class GoalTrace:
    """What the robot PC saw of one ExecuteChunk goal (receive times, ``time.time()``)."""

    accepted: float | None = None  # goal_info.stamp: when the controller accepted it
    executing: float | None = None
    ended: float | None = None
    end_status: int = 0
    feedback: list[tuple[float, int, int]] = field(default_factory=list)  # (t, executed, total)


@dataclass
class GoalAudit:
    """One goal's verdict."""

    goal: str
    stale_rows: int  # rows kept for execution although due before the goal reached the controller
    executed_rows: int
    overrun_s: float | None  # end of a succeeded stream minus its chunk's last row's due time


def fresh_rows(stamp: float, dt: float, rows: int, at: float, late_tolerance: float) -> int:
    """Rows of a chunk (row i due at ``stamp + (i + 1) * dt``) still due at time ``at``."""
    due = stamp + dt * np.arange(1, rows + 1)
    return int(np.count_nonzero(due >= at - late_tolerance))


def audit_goal(
    goal: dict[str, Any], trace: GoalTrace, late_tolerance: float = LATE_TOLERANCE
) -> GoalAudit:
    """Stale rows and overrun of one goal from its log record and robot-side trace.

    The controller plans after accepting, so the rows it keeps (``points_total`` of the
    feedback) can be at most the rows still due at acceptance; more means rows whose time had
    passed were executed. A stream that succeeded must end when its last row is due.
    """
    rows = chunk_rows(goal)
    if trace.accepted is None or not trace.feedback:
        return GoalAudit(goal["goal"], 0, 0, None)
    kept = max(total for _, _, total in trace.feedback)
    executed = max(done for _, done, _ in trace.feedback)
    allowed = fresh_rows(goal["stamp"], goal["dt"], rows, trace.accepted, late_tolerance)
    overrun = None
    if trace.ended is not None and trace.end_status == 4:
        overrun = trace.ended - (goal["stamp"] + rows * goal["dt"])
    return GoalAudit(goal["goal"], max(0, kept - allowed), executed, overrun)


# ---------------------------------------------------------------------- ROS side (robot PC)
class Observer:
    """Robot-PC node recording the controller's action status, feedback and commands."""

    def __init__(self, context: Any) -> None:  # noqa: ANN401 - rclpy Context
        import rclpy
        from action_msgs.msg import GoalStatusArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, qos_profile_action_status_default
        from std_msgs.msg import Float64MultiArray

        from frs_msgs.action import ExecuteChunk
        from frs_msgs.msg import EpisodeStatus

        self.node = rclpy.create_node("network_observer", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.traces: dict[str, GoalTrace] = {}
        self.commands: list[tuple[float, float]] = []  # (t, max |velocity|)
        self.status: Any = None
        node = self.node
        node.create_subscription(
            GoalStatusArray,
            "frs/execute_chunk/_action/status",
            self._on_status,
            qos_profile_action_status_default,
        )
        node.create_subscription(
            ExecuteChunk.Impl.FeedbackMessage,
            "frs/execute_chunk/_action/feedback",
            self._on_feedback,
            QoSProfile(depth=100),
        )
        node.create_subscription(
            Float64MultiArray,
            "forward_velocity_controller/commands",
            lambda msg: self.commands.append((time.time(), float(np.abs(msg.data).max()))),
            QoSProfile(depth=100),
        )
        node.create_subscription(
            EpisodeStatus, "frs/episode_status", self._on_episode, QoSProfile(depth=10)
        )

    def _trace(self, goal_id: Any) -> GoalTrace:  # noqa: ANN401
        return self.traces.setdefault(bytes(goal_id.uuid).hex(), GoalTrace())

    def _on_status(self, msg: Any) -> None:  # noqa: ANN401
        now = time.time()
        for status in msg.status_list:
            trace = self._trace(status.goal_info.goal_id)
            if trace.accepted is None:
                stamp = status.goal_info.stamp
                trace.accepted = stamp.sec + stamp.nanosec * 1e-9
            if status.status == STATUS_EXECUTING and trace.executing is None:
                trace.executing = now
            if status.status in TERMINAL and trace.ended is None:
                trace.ended, trace.end_status = now, int(status.status)

    def _on_feedback(self, msg: Any) -> None:  # noqa: ANN401
        fb = msg.feedback
        self._trace(msg.goal_id).feedback.append(
            (time.time(), int(fb.points_executed), int(fb.points_total))
        )

    def _on_episode(self, msg: Any) -> None:  # noqa: ANN401
        self.status = msg

    def spin_for(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Spin ``seconds`` or until ``until()``; whether ``until`` held."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if until is not None and until():
                return True
            self.executor.spin_once(timeout_sec=0.01)
        return until is not None and until()

    def driven_since(self, t: float) -> bool:
        """Whether a non-zero velocity was commanded at or after ``t``."""
        return any(v > 1e-3 and tc >= t for tc, v in self.commands)

    def streaming(self) -> bool:
        """Whether a chunk streams now (its last feedback says rows remain)."""
        for trace in self.traces.values():
            if trace.ended is None and trace.feedback:
                _, done, total = trace.feedback[-1]
                if done < total:
                    return True
        return False


@dataclass
class CutEvent:
    """One link cut: when the arm stopped after it and was driven again after the restore."""

    cut_at: float
    restored_at: float
    stop_after_cut_s: float | None  # None: not stopped before the restore
    stop_after_last_row_s: float | None
    resume_after_restore_s: float | None  # None: not driven again in the episode
    #: The episode was over, the task solved, before the arm was driven again: nothing was
    #: left to resume (the last rows before the cut finished the push).
    solved_before_resume: bool = False


def cut_event(
    commands: Sequence[tuple[float, float]],
    cut_at: float,
    restored_at: float,
    last_row_due: float,
    resume_by: float,
) -> CutEvent:
    """The arm stopped at the first zero command after which every command up to the restore
    is zero; resumed at the first non-zero command after the restore."""
    during = [(t, v) for t, v in commands if cut_at <= t < restored_at]
    stopped = None
    for i, (t, v) in enumerate(during):
        if v <= 1e-9 and all(w <= 1e-9 for _, w in during[i:]):
            stopped = t
            break
    resumed = next((t for t, v in commands if restored_at <= t <= resume_by and v > 1e-3), None)
    return CutEvent(
        cut_at,
        restored_at,
        None if stopped is None else stopped - cut_at,
        None if stopped is None else stopped - last_row_due,
        None if resumed is None else resumed - restored_at,
    )


# ---------------------------------------------------------------------- the run
class Nodes:
    """Node processes on both sides; stdout/stderr to one log file each."""

    def __init__(self, link: RigLink, log_dir: Path, env: dict[str, str]) -> None:
        self.link, self.log_dir, self.env = link, log_dir, env
        self.procs: list[tuple[str, subprocess.Popen[bytes], TextIO]] = []

    def start(self, name: str, args: Sequence[str], policy_host: bool) -> None:
        argv = [sys.executable, *args]
        if policy_host:
            argv = self.link.on_policy_host(argv)
        out = (self.log_dir / f"{name}.log").open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.procs.append((name, proc, out))

    def dead(self) -> list[str]:
        """Names of nodes that exited."""
        return [name for name, proc, _ in self.procs if proc.poll() is not None]

    def stop(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _, proc, out in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            out.close()


def start_stack(nodes: Nodes, goal_log: Path) -> None:
    """The four nodes as ``test_full_pipeline`` starts them, split over the two hosts."""
    from frs_bringup.testing import ros_args
    from frs_steering.package_data import shipped_checkpoint

    nodes.start(
        "sim_robot",
        ["-m", "frs_sim.sim_robot_node", *ros_args({"split": "novel", "max_episode_time": 12.0})],
        policy_host=False,
    )
    controller = {"watchdog_period": WATCHDOG_PERIOD, "chunk_timeout": CHUNK_TIMEOUT}
    nodes.start(
        "arm_controller",
        ["-m", "frs_control.arm_controller_node", *ros_args(controller)],
        policy_host=False,
    )
    steering = {"checkpoint": str(shipped_checkpoint())}
    nodes.start(
        "steering", ["-m", "frs_steering.steering_node", *ros_args(steering)], policy_host=True
    )
    proposer = {"reasoner": "scripted", "method": "frs", "start_enabled": False}
    nodes.env[GOAL_LOG_ENV] = str(goal_log)
    nodes.start(
        "proposer",
        ["-m", "frs_bringup.network_trials", "proposer", *ros_args(proposer)],
        policy_host=True,
    )


def apply_condition(link: RigLink, condition: str) -> None:
    """Set the link to ``condition`` (``cut`` is applied per episode)."""
    link.clear()
    if condition.startswith("drop"):
        link.drop(float(condition[len("drop") :]))
    elif condition.startswith("cap"):
        link.cap(condition[len("cap") :])
    elif condition not in ("clean", "cut"):
        raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")


@dataclass
class ConditionResult:
    """Everything measured under one condition."""

    condition: str
    episodes: int
    successes: int
    outcomes: list[str]
    goals_sent: int
    goals_accepted: int
    goals_executed: int
    stale_rows_executed: int
    max_overrun_s: float | None
    undriven_episodes: int  # episodes in which the arm was never driven
    packets_dropped: int = 0
    link_kbit_s: float = 0.0  # mean traffic over the link, both directions
    cuts: list[CutEvent] = field(default_factory=list)
    wall_s: float = 0.0


def run_condition(
    condition: str,
    link: RigLink,
    observer: Observer,
    runner: Any,  # noqa: ANN401 - EpisodeRunner
    episodes: int,
    seed: int,
    goal_log: Path,
    cut_seconds: float,
    episode_timeout: float,
) -> ConditionResult:
    """``episodes`` episodes under ``condition``; the audit of the goals sent meanwhile."""
    start = time.time()
    apply_condition(link, condition)
    bytes_before = link.link_bytes()
    lines, successes, undriven, cuts = [], 0, 0, []
    for index in range(episodes):
        task = NOVEL_TASKS[index % len(NOVEL_TASKS)]
        reply = runner.start_episode(observer.executor, task, seed + index)
        began = time.time()
        runner.set_proposer(observer.executor, True)

        def done(reply: Any = reply) -> bool:  # noqa: ANN401
            status = observer.status
            return status is not None and status.episode == reply.episode and status.done

        if condition == "cut":
            cuts.append(
                cut_in_episode(link, observer, goal_log, began, cut_seconds, episode_timeout, done)
            )
        observer.spin_for(max(0.0, episode_timeout - (time.time() - began)), done)
        try:
            runner.set_proposer(observer.executor, False)
        except RuntimeError as error:  # a lossy link may eat the call; the next reset goes on
            print(f"[network] {condition}: {error}", flush=True)
        status = observer.status
        finished = done()
        success = bool(finished and status.success)
        reason = (status.reason or "done") if finished else "runner timeout"
        successes += success
        undriven += not observer.driven_since(began)
        lines.append(
            f"{task} seed {seed + index}: {'SUCCESS' if success else 'failure'} "
            f"({reason}, {time.time() - began:.1f} s)"
        )
        print(f"[network] {condition}: {lines[-1]}", flush=True)
    observer.spin_for(1.0)  # last statuses and feedback
    goals = read_goals(goal_log, start)
    audits = [audit_goal(goal, observer.traces.get(goal["goal"], GoalTrace())) for goal in goals]
    overruns = [a.overrun_s for a in audits if a.overrun_s is not None]
    result = ConditionResult(
        condition=condition,
        episodes=episodes,
        successes=successes,
        outcomes=lines,
        goals_sent=len(goals),
        goals_accepted=sum(
            observer.traces.get(g["goal"], GoalTrace()).accepted is not None for g in goals
        ),
        goals_executed=sum(a.executed_rows > 0 for a in audits),
        stale_rows_executed=sum(a.stale_rows for a in audits),
        max_overrun_s=max(overruns, default=None),
        undriven_episodes=undriven,
        packets_dropped=link.dropped_packets() if condition.startswith("drop") else 0,
        link_kbit_s=8e-3 * (link.link_bytes() - bytes_before) / (time.time() - start),
        cuts=cuts,
        wall_s=time.time() - start,
    )
    link.clear()
    return result


def cut_in_episode(
    link: RigLink,
    observer: Observer,
    goal_log: Path,
    began: float,
    cut_seconds: float,
    timeout: float,
    episode_done: Callable[[], bool],
) -> CutEvent | None:
    """Once the arm is driven, cut the link while a chunk streams; restore after
    ``cut_seconds``; wait for the arm to be driven again (or the episode to end)."""
    if not observer.spin_for(timeout / 2, lambda: observer.driven_since(began)):
        return None
    observer.spin_for(1.0)  # into the episode
    observer.spin_for(2.0, observer.streaming)  # mid-chunk
    cut_at = link.cut()
    observer.spin_for(cut_seconds)
    restored_at = link.restore()
    resume_by = restored_at + 10.0
    observer.spin_for(10.0, lambda: observer.driven_since(restored_at) or episode_done())
    # The last row any stream could run: that of the newest goal accepted before the cut.
    ends = [
        goal["stamp"] + chunk_rows(goal) * goal["dt"]
        for goal in read_goals(goal_log, began)
        if (trace := observer.traces.get(goal["goal"])) is not None
        and trace.accepted is not None
        and trace.accepted < cut_at
    ]
    event = cut_event(observer.commands, cut_at, restored_at, max(ends, default=cut_at), resume_by)
    solved = episode_done() and bool(observer.status.success)
    event.solved_before_resume = solved and event.resume_after_restore_s is None
    return event


def read_goals(goal_log: Path, since: float) -> list[dict[str, Any]]:
    """The goals the proposer logged as sent at or after ``since``."""
    goals = [json.loads(line) for line in goal_log.read_text().splitlines() if line.strip()]
    return [goal for goal in goals if goal["sent"] >= since]


def chunk_rows(goal: dict[str, Any]) -> int:
    """Rows of a logged goal's chunk that may run (the ``max_points`` prefix)."""
    return goal["horizon"] if goal["max_points"] <= 0 else min(goal["horizon"], goal["max_points"])


def main(argv: Sequence[str] | None = None) -> None:
    """Parse, enter the namespaces, run every condition, print the table, write the JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["proposer"]:
        run_logged_proposer(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--episodes", type=int, default=3, help="episodes per condition")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--cut-seconds", type=float, default=2.0)
    parser.add_argument("--episode-timeout", type=float, default=30.0)
    parser.add_argument("--domain-id", type=int, default=42)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--log-dir", type=Path, default=Path("build/network_trials"))
    args = parser.parse_args(argv)
    conditions = [c for c in args.conditions.split(",") if c]
    for condition in conditions:
        if condition not in CONDITIONS and not condition.startswith(("drop", "cap")):
            parser.error(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
    enter_namespaces(["-m", "frs_bringup.network_trials", *argv])
    results = run_all(conditions, args)
    print(table(results), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


def run_all(conditions: Sequence[str], args: argparse.Namespace) -> list[ConditionResult]:
    """Set up the link and the stack, run each condition, tear everything down."""
    import rclpy
    from rclpy.context import Context

    from frs_bringup.episode_runner import EpisodeRunner

    args.log_dir.mkdir(parents=True, exist_ok=True)
    env = dds_env(args.domain_id)
    os.environ.update(env)
    link = RigLink()
    nodes = Nodes(link, args.log_dir, dict(env))
    goal_log = args.log_dir / "goals.jsonl"
    goal_log.write_text("")
    context = Context()
    rclpy.init(context=context)
    results: list[ConditionResult] = []
    try:
        start_stack(nodes, goal_log)
        observer = Observer(context)
        runner = EpisodeRunner(context=context)
        observer.executor.add_node(runner)
        runner.wait_for_stack(observer.executor, timeout_s=180.0)
        for condition in conditions:
            results.append(
                run_condition(
                    condition,
                    link,
                    observer,
                    runner,
                    args.episodes,
                    args.seed,
                    goal_log,
                    args.cut_seconds,
                    args.episode_timeout,
                )
            )
            dead = nodes.dead()
            if dead:
                raise RuntimeError(f"nodes exited during {condition}: {dead} (see {args.log_dir})")
    finally:
        nodes.stop()
        context.try_shutdown()
        link.close()
    return results


def table(results: Sequence[ConditionResult]) -> str:
    """One line per condition."""
    lines = [
        f"{'condition':12s} {'success':>8s} {'goals sent/acc/exec':>20s} {'stale rows':>10s} "
        f"{'overrun s':>9s} {'dropped':>7s} {'kbit/s':>7s}  cut: stop after cut / resume s"
    ]
    for r in results:
        over = "-" if r.max_overrun_s is None else f"{r.max_overrun_s:.3f}"
        cuts = ", ".join(
            f"{_fmt(c.stop_after_cut_s)}/"
            f"{'solved' if c.solved_before_resume else _fmt(c.resume_after_restore_s)}"
            for c in r.cuts
            if c is not None
        )
        lines.append(
            f"{r.condition:12s} {r.successes:>3d}/{r.episodes:<4d} "
            f"{f'{r.goals_sent}/{r.goals_accepted}/{r.goals_executed}':>20s} "
            f"{r.stale_rows_executed:>10d} {over:>9s} {r.packets_dropped:>7d} "
            f"{r.link_kbit_s:>7.0f}  {cuts}"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
