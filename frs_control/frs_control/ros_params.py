"""Declaring node parameters with descriptors, the one way every FRS node does it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

if TYPE_CHECKING:  # parameter helpers usable where no node is (tables, docs)
    from rclpy.node import Node

#: (name, default, description, descriptor extras such as ranges; "read_only" defaults to True)
ParameterSpec = tuple[str, Any, str, Mapping[str, Any]]


def declare_described(node: Node, specs: Iterable[ParameterSpec]) -> None:
    """Declare each parameter with its description, range and read-only flag."""
    for name, default, description, extra in specs:
        extra = dict(extra)
        read_only = bool(extra.pop("read_only", True))
        descriptor = ParameterDescriptor(description=description, read_only=read_only, **extra)
        node.declare_parameter(name, default, descriptor)


#: The action servers' result lifetime. rclpy keeps a finished goal 900 s by default and lists
#: every kept goal in each status message, which every client decodes in Python (py-spy: after a
#: few hundred goals most of a client's time went there). FRS clients fetch a result as soon as
#: the goal is accepted, so a couple of seconds is plenty.
RESULT_TIMEOUT: ParameterSpec = (
    "result_timeout",
    2.0,
    "s a finished goal's result stays fetchable (the action status lists every kept goal)",
    {"floating_point_range": [FloatingPointRange(from_value=0.1, to_value=3600.0)]},
)


def float_range(low: float, high: float) -> dict[str, Any]:
    """Descriptor extras limiting a float parameter to ``[low, high]``."""
    return {"floating_point_range": [FloatingPointRange(from_value=low, to_value=high)]}


def int_range(low: int, high: int) -> dict[str, Any]:
    """Descriptor extras limiting an integer parameter to ``[low, high]`` (step 1)."""
    return {"integer_range": [IntegerRange(from_value=low, to_value=high, step=1)]}
