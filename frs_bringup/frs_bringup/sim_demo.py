"""A simulated stack without ros2 launch: its nodes, then episodes.

``ros2 launch`` is not installable from PyPI wheels, so this entry point does its job for the
simulated stacks: it starts the nodes of a stack (:mod:`frs_bringup.stacks`, ``--stack``,
default ``sim``) from the stack's parameter YAML, each in its own process as launch would, and
is their lifecycle manager (:mod:`frs_bringup.stack_manager`): lifecycle nodes start with
``autostart:=false`` and it configures and activates them. It waits until they serve, runs
episodes through the episode runner and prints the result of each, then stops the stack in
reverse order, deactivating each lifecycle node and letting its goals end before the node
goes. ``--one-process`` composes the same nodes in this process on one executor instead; on 2
cores that shares one GIL between physics, control, steering and proposing and measured 5/18
vs 12/18 novel successes, so one process per node stays the default. On a rig with ROS 2
installed use the launch files.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import rclpy
import yaml
from rclpy.executors import Executor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String

from frs_bringup.episode_runner import EpisodeRunner, summarize
from frs_bringup.recorder import READY_TOPIC
from frs_bringup.stack_manager import StackManager, spin_until
from frs_bringup.stacks import (
    ARM_CONTROLLER,
    PROPOSER,
    STACKS,
    NodeSpec,
    Stack,
    apply_niceness,
    get_stack,
    params_path,
)
from frs_control.arm_controller_params import STREAMED_OUTPUTS
from frs_control.ros_executor import LATCHED_QOS

#: Seconds a node process gets to exit after SIGINT before it is killed.
EXIT_TIMEOUT = 10.0

PR_SET_PDEATHSIG = 1  # prctl option: signal this process when its parent dies


def default_params_file(stack: str = "sim") -> Path:
    """The parameter YAML of ``stack`` (source tree or installed share directory)."""
    return params_path(get_stack(stack))


def _node_parameters(params_file: Path, node: str) -> dict:
    document = yaml.safe_load(params_file.read_text()) or {}
    return (document.get(node) or {}).get("ros__parameters") or {}


def benchmark_episodes(params_file: Path, eval_seed: int, episodes: int | None) -> list[Parameter]:
    """The episode runner's tasks and seeds for the simulated benchmark's episodes of
    ``eval_seed``: the same (task, scene, phrasing) as ``frs_sim.evaluate --seeds eval_seed``
    with ``--episodes-per-task`` = episodes / tasks, so both can be compared episode by episode."""
    from frs_sim.evaluate.rollout import episode_seed
    from frs_sim.tasks import get_split

    split = _node_parameters(params_file, "sim_robot").get("split", "novel")
    tasks = [task.name for task in get_split(split)]
    if episodes is None:
        episodes = int(_node_parameters(params_file, "episode_runner").get("episodes", 6))
    order = [(index % len(tasks), index // len(tasks)) for index in range(episodes)]
    return [
        Parameter("episodes", value=episodes),
        Parameter("tasks", value=[tasks[task] for task, _ in order]),
        Parameter("seeds", value=[episode_seed(eval_seed, task, ep) for task, ep in order]),
    ]


def write_results(out: Path, outcomes: list, params_file: Path, args: argparse.Namespace) -> None:
    """``results.json``: a row per verb and overall (split, method, episodes, successes,
    success_rate) and every episode."""
    robot = _node_parameters(params_file, "sim_robot")
    proposer = _node_parameters(params_file, "proposer")
    split = robot.get("split", "novel")
    method = args.method or proposer.get("method", "frs")
    groups: dict[str, list] = {"all": list(outcomes)}
    for outcome in outcomes:
        groups.setdefault(outcome.task.split("_")[0], []).append(outcome)
    rows = [
        {
            "split": split,
            "method": method,
            "tasks": name,
            "episodes": len(group),
            "successes": sum(o.success for o in group),
            "success_rate": sum(o.success for o in group) / len(group),
        }
        for name, group in groups.items()
    ]
    document = {
        "command": " ".join(["python -m frs_bringup.sim_demo", *sys.argv[1:]]),
        "stack": args.stack,
        "one_process": args.one_process,
        "output": args.output
        or _node_parameters(params_file, "arm_controller").get("output", "forward_velocity"),
        "eval_seed": args.eval_seed,
        "rows": rows,
        "episodes": [asdict(o) for o in outcomes],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    simulated = sorted(name for name, stack in STACKS.items() if stack.episodes)
    parser.add_argument("--stack", default="sim", choices=simulated, help="stack to run")
    parser.add_argument("--params-file", type=Path, default=None, help="node parameter YAML")
    parser.add_argument("--episodes", type=int, default=None, help="override episode count")
    parser.add_argument("--method", default=None, help="steering method (frs, base, direct, ...)")
    parser.add_argument(
        "--output",
        default=None,
        choices=STREAMED_OUTPUTS,
        help="the arm controller's command interface (default: the parameter file's)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the first episode")
    parser.add_argument(
        "--eval-seed",
        type=int,
        default=None,
        help="run the simulated benchmark's episodes of this evaluation seed (frs_sim.evaluate "
        "--seeds S): episode i is task i %% n of the robot's split at episode i // n's scene",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="write results.json (every episode) here"
    )
    parser.add_argument("--log-level", default="", help="ROS log level of the nodes, e.g. debug")
    parser.add_argument(
        "--record", type=Path, default=None, help="also record the session to this bag (frs_record)"
    )
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="compose every node in this process on one executor (no per-node processes)",
    )
    return parser.parse_args(argv)


def node_overrides(spec: NodeSpec, args: argparse.Namespace) -> dict[str, object]:
    """Parameters set on top of the YAML: the manager's ``autostart`` and the CLI options."""
    overrides: dict[str, object] = {}
    if spec.lifecycle:
        overrides["autostart"] = False  # this process is the lifecycle manager
    if spec.name == PROPOSER.name and args.method is not None:
        overrides["method"] = args.method
    if spec.name == ARM_CONTROLLER.name and args.output is not None:
        overrides["output"] = args.output
    return overrides


def _ros_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _nothing() -> None:
    pass


@dataclass
class RunningNode:
    """A started node of the stack: how to start its loop, whether it runs, how to stop it."""

    spec: NodeSpec
    stop: Callable[[], None]
    alive: Callable[[], bool]
    start: Callable[[], None] = _nothing  # after the lifecycle bring-up


def start_stack(
    stack: Stack, params_file: Path, args: argparse.Namespace
) -> tuple[list[subprocess.Popen], list[RunningNode]]:
    """Start each node of ``stack`` in its own process, as the launch files do.

    Returns the recorder's process (``--record``; empty otherwise) and the nodes, in start order.
    """
    recorder = []
    if args.record is not None:
        command = [sys.executable, "-m", "frs_bringup.recorder", "--out", str(args.record)]
        command += ["--params-file", str(params_file)]
        recorder.append(subprocess.Popen(command, preexec_fn=_stop_with_parent))
    nodes = []
    for spec in stack.nodes:
        ros_args = ["--ros-args", "--params-file", str(params_file)]
        for name, value in node_overrides(spec, args).items():
            ros_args += ["-p", f"{name}:={_ros_value(value)}"]
        if args.log_level:
            ros_args += ["--log-level", args.log_level]
        command = [sys.executable, "-m", spec.module, *ros_args]
        process = subprocess.Popen(command, preexec_fn=_stop_with_parent)
        apply_niceness(process.pid, spec.nice)
        nodes.append(
            RunningNode(spec, lambda p=process: stop_stack([p]), lambda p=process: p.poll() is None)
        )
    return recorder, nodes


def compose_stack(stack: Stack, executor: Executor, args: argparse.Namespace) -> list[RunningNode]:
    """The same nodes in this process on ``executor``, in start order.

    A node class with ``start()`` / ``stop()`` (the proposer's loop thread) is started after
    the lifecycle bring-up and stopped before it is destroyed.
    """
    nodes = []
    for spec in stack.nodes:
        node_class = getattr(importlib.import_module(spec.module), spec.cls)
        overrides = [Parameter(n, value=v) for n, v in node_overrides(spec, args).items()]
        node: Node = node_class(parameter_overrides=overrides)
        executor.add_node(node)

        def stop(node: Node = node) -> None:
            if callable(getattr(node, "stop", None)):
                node.stop()
            executor.remove_node(node)
            node.destroy_node()

        start = node.start if callable(getattr(node, "start", None)) else _nothing
        nodes.append(RunningNode(spec, stop, lambda: True, start))
    return nodes


def stop_nodes(
    nodes: list[RunningNode], manager: StackManager | None, executor: Executor | None
) -> None:
    """Stop ``nodes`` in reverse start order, each once it is quiet.

    With a ``manager``, the goals in flight finish first (nothing sends new ones once the
    episode runner has switched the proposer off), then each lifecycle node is deactivated and
    its goals left to end before it goes, so no node is torn down under a running goal: the
    proposer goes first, then steering, then the arm controller (the arm stops), then the robot.
    """
    managed = manager is not None and executor is not None and rclpy.ok(context=manager.context)
    if managed:
        managed = _try(lambda: manager.wait_idle(executor), "waiting for goals")
    for running in reversed(nodes):
        if managed and running.spec.lifecycle and running.alive():
            _try(lambda spec=running.spec: manager.quiesce(executor, spec), running.spec.name)
        running.stop()


def _try(step: Callable[[], object], what: str) -> bool:
    """Run a step of stopping; stopping goes on whatever happens (False, said on stderr)."""
    try:
        step()
    except Exception as error:  # noqa: BLE001 - e.g. the context went with a second Ctrl-C
        print(f"[sim_demo] {what}: {type(error).__name__}: {error}", file=sys.stderr)
        return False
    return True


def _stop_with_parent() -> None:
    """In a started node: get SIGTERM when sim_demo dies, even by SIGKILL (Linux), so no node of
    the stack outlives the process that manages it (a stray node would answer the next stack's
    lifecycle calls and keep publishing). SIGTERM, not SIGINT: a background job inherits SIGINT
    ignored, and a node still importing would never see it; FRS nodes stop cleanly on both."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_for_recorder(
    node: Node, executor: Executor, process: subprocess.Popen, timeout_s: float = 120.0
) -> None:
    """Until the recorder announces that it records what a replay needs (``READY_TOPIC``);
    RuntimeError if it does not or exits.

    Its start-up (rclpy, the steering adapter, the bag) can outlast the stack's on a loaded
    machine: a demo that finished first stopped it before it wrote a bag at all, and episodes
    started before its readers matched left chunks whose observations the bag lacks.
    """
    announced: list[String] = []
    subscription = node.create_subscription(String, READY_TOPIC, announced.append, LATCHED_QOS)
    try:
        ready = spin_until(
            executor, lambda: bool(announced) or process.poll() is not None, timeout_s
        )
    finally:
        node.destroy_subscription(subscription)
    if process.poll() is not None:
        raise RuntimeError(f"the recorder exited with {process.returncode} (see its output)")
    if not ready:
        raise RuntimeError(
            f"the recorder did not report recording the observations within {timeout_s:g} s "
            f"(nothing on {READY_TOPIC}; see its output)"
        )


def stop_stack(processes: list[subprocess.Popen]) -> None:
    """SIGINT every process (nodes stop the arm on the way out), then kill stragglers."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stack = get_stack(args.stack)
    params_file = args.params_file or default_params_file(stack.name)
    if not params_file.is_file():
        print(f"parameter file not found: {params_file}", file=sys.stderr)
        return 2
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    recorder, nodes = ([], []) if args.one_process else start_stack(stack, params_file, args)
    rclpy.init(args=["--ros-args", "--params-file", str(params_file)])
    overrides = [
        Parameter(name, value=value)
        for name, value in (("episodes", args.episodes), ("seed", args.seed))
        if value is not None
    ]
    if args.eval_seed is not None:
        overrides = [o for o in overrides if o.name != "episodes"]
        overrides += benchmark_episodes(params_file, args.eval_seed, args.episodes)
    executor = SingleThreadedExecutor()
    runner = manager = None
    outcomes = []
    try:
        runner = EpisodeRunner(parameter_overrides=overrides)
        manager = StackManager(stack)
        executor.add_node(runner)
        executor.add_node(manager)
        if args.one_process:
            nodes = compose_stack(stack, executor, args)
        manager.bring_up(executor)
        for running in nodes:
            running.start()
        if recorder:
            wait_for_recorder(manager, executor, recorder[0])
        outcomes = runner.run(executor)
    except RuntimeError as error:
        print(f"[sim_demo] {error}", file=sys.stderr)
    finally:
        stop_stack(recorder)  # first: the bag closes cleanly
        stop_nodes(nodes, manager, executor)
        for node in (manager, runner):
            if node is not None:
                node.destroy_node()
        rclpy.try_shutdown()
    print(f"simulated demo: {summarize(outcomes)}", flush=True)
    if args.out is not None and outcomes:
        write_results(args.out, outcomes, params_file, args)
    return 0 if outcomes else 1


if __name__ == "__main__":
    sys.exit(main())
