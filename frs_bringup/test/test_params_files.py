"""Every parameter each stack's YAML sets is declared by its node and takes the YAML value.

A ROS node silently ignores parameters it does not declare, so a typo in a YAML file would
otherwise go unnoticed until a rig behaves differently from what the file says. The stacks and
their files come from frs_bringup.stacks, so a stack added there is checked here too.
"""

from __future__ import annotations

import importlib

import pytest
import rclpy
import yaml
from rclpy.context import Context
from rclpy.lifecycle import LifecycleNode

from frs_bringup.stacks import EPISODE_RUNNER, STACKS, NodeSpec, get_stack, params_path


def _flat(params: dict, prefix: str = "") -> dict:
    """Nested YAML maps as ROS parameter names (``adapter: {cameras: ..}``: ``adapter.cameras``)."""
    flat = {}
    for name, value in params.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _node_class(spec: NodeSpec) -> type:
    return getattr(importlib.import_module(spec.module), spec.cls)


@pytest.mark.parametrize("stack_name", sorted(STACKS))
def test_yaml_parameters_are_declared_and_applied(stack_name: str) -> None:
    stack = get_stack(stack_name)
    path = params_path(stack)
    sections = yaml.safe_load(path.read_text())
    specs = {spec.name: spec for spec in stack.nodes}
    if stack.episodes:
        specs[EPISODE_RUNNER.name] = EPISODE_RUNNER
    unknown = sorted(set(sections) - set(specs))
    assert not unknown, f"{path.name}: sections {unknown} are no node of stack {stack_name}"
    context = Context()
    rclpy.init(args=["--ros-args", "--params-file", str(path)], context=context)
    try:
        for node_name, spec in specs.items():
            node = _node_class(spec)(context=context)
            try:
                assert node.get_name() == node_name, f"{spec.cls} is not named {node_name}"
                assert isinstance(node, LifecycleNode) == spec.lifecycle, node_name
                if spec.lifecycle:  # launch and sim_demo set it false: they are the manager
                    assert node.has_parameter("autostart"), f"{node_name} has no autostart"
                section = sections.get(node_name, {"ros__parameters": {}})
                for name, value in _flat(section["ros__parameters"]).items():
                    assert node.has_parameter(name), f"{path.name}: {node_name} has no '{name}'"
                    actual = node.get_parameter(name).value
                    expected = list(value) if isinstance(value, list) else value
                    actual = list(actual) if isinstance(actual, list | tuple) else actual
                    assert actual == expected, f"{path.name}: {node_name}.{name}"
            finally:
                node.destroy_node()
    finally:
        context.try_shutdown()
