"""Every parameter the shipped YAML files set is declared by its node and takes the YAML value.

A ROS node silently ignores parameters it does not declare, so a typo in a YAML file would
otherwise go unnoticed until a rig behaves differently from what the file says.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import rclpy
import yaml
from rclpy.context import Context

CONFIG = Path(__file__).resolve().parents[1] / "config"


def _node_classes() -> dict[str, type]:
    from frs_bringup.episode_runner import EpisodeRunner
    from frs_control.arm_controller_node import ArmControllerNode
    from frs_sim.sim_robot_node import SimRobotNode
    from frs_steering.steering_node import SteeringNode
    from frs_vlm_bridge.proposer_node import ProposerNode

    return {
        "sim_robot": SimRobotNode,
        "arm_controller": ArmControllerNode,
        "steering": SteeringNode,
        "proposer": ProposerNode,
        "episode_runner": EpisodeRunner,
    }


@pytest.mark.parametrize("file_name", ["sim.yaml", "franka.yaml"])
def test_yaml_parameters_are_declared_and_applied(file_name: str) -> None:
    path = CONFIG / file_name
    sections = yaml.safe_load(path.read_text())
    classes = _node_classes()
    context = Context()
    rclpy.init(args=["--ros-args", "--params-file", str(path)], context=context)
    try:
        for node_name, section in sections.items():
            node = classes[node_name](context=context)
            try:
                for name, value in section["ros__parameters"].items():
                    assert node.has_parameter(name), f"{file_name}: {node_name} has no '{name}'"
                    actual = node.get_parameter(name).value
                    expected = list(value) if isinstance(value, list) else value
                    actual = list(actual) if isinstance(actual, list | tuple) else actual
                    assert actual == expected, f"{file_name}: {node_name}.{name}"
            finally:
                node.destroy_node()
    finally:
        context.try_shutdown()
