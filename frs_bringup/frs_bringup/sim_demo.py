"""The simulated demo in one process: the nodes of sim.launch.py, composed without ros2 launch.

``ros2 launch`` is not installable from PyPI wheels, so this entry point builds the same nodes
(simulated robot, arm controller, steering, proposer, episode runner) in one process from the same
parameter YAML, brings the lifecycle nodes up, spins them on a multi-threaded executor and runs
episodes, printing the result of each. On a rig with ROS 2 installed use the launch files instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

import rclpy
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.parameter import Parameter

from frs_bringup.episode_runner import EpisodeRunner, summarize
from frs_steering.package_data import find_package_file

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def default_params_file() -> Path:
    """config/sim.yaml of frs_bringup (source tree or installed share directory)."""
    return find_package_file("frs_bringup", PACKAGE_ROOT, "config", "sim.yaml")


def bring_up(node: LifecycleNode) -> None:
    """configure + activate a lifecycle node in-process, failing loudly if it refuses."""
    for transition in (node.trigger_configure, node.trigger_activate):
        result = transition()
        if result != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError(f"{node.get_name()}: {transition.__name__} failed ({result})")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params-file", type=Path, default=None, help="node parameter YAML")
    parser.add_argument("--episodes", type=int, default=None, help="override episode count")
    parser.add_argument("--method", default=None, help="steering method (frs, base, direct, ...)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first episode")
    parser.add_argument(
        "--log-level", default="", help="ROS log level, e.g. debug or proposer:=debug"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    extra_ros_args = ["--log-level", args.log_level] if args.log_level else []
    params_file = args.params_file or default_params_file()
    if not params_file.is_file():
        print(f"parameter file not found: {params_file}", file=sys.stderr)
        return 2
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    # Imported here so --help works without loading MuJoCo and torch.
    from frs_bringup.sim_robot_node import SimRobotNode
    from frs_steering.arm_controller_node import ArmControllerNode
    from frs_steering.steering_node import SteeringNode
    from frs_vlm_bridge.proposer_node import ProposerNode

    rclpy.init(args=["--ros-args", "--params-file", str(params_file), *extra_ros_args])
    runner_overrides = [
        Parameter(name, value=value)
        for name, value in (("episodes", args.episodes), ("seed", args.seed))
        if value is not None
    ]
    proposer_overrides = [] if args.method is None else [Parameter("method", value=args.method)]
    nodes = [
        SimRobotNode(),
        ArmControllerNode(),
        SteeringNode(),
        ProposerNode(parameter_overrides=proposer_overrides),
    ]
    proposer = nodes[-1]
    runner = EpisodeRunner(parameter_overrides=runner_overrides)
    stack = MultiThreadedExecutor(num_threads=4)
    for node in nodes:
        stack.add_node(node)
    spinner = threading.Thread(target=stack.spin, daemon=True)
    try:
        for node in nodes:
            if isinstance(node, LifecycleNode):
                bring_up(node)
        spinner.start()
        proposer.start()
        control = SingleThreadedExecutor()
        control.add_node(runner)
        outcomes = runner.run(control)
    finally:
        proposer.stop()
        stack.shutdown(timeout_sec=2.0)
        for node in [*nodes, runner]:
            node.destroy_node()
        rclpy.try_shutdown()
    print(f"simulated demo: {summarize(outcomes)}", flush=True)
    return 0 if outcomes else 1


if __name__ == "__main__":
    sys.exit(main())
