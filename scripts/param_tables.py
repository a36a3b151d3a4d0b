"""Markdown tables of every FRS node's declared parameters, for docs/nodes.md.

Each node class is constructed (which only declares its parameters; lifecycle nodes load nothing
before ``configure``, the simulated robot builds its MuJoCo scene) in a private rclpy context
limited to localhost, its parameters and descriptors are read back, and the node is destroyed.
Nothing spins and no model is loaded, so the tables are what ``ros2 param describe`` would show.

    python scripts/param_tables.py                    # print every table
    python scripts/param_tables.py --write docs/nodes.md   # refresh the marked tables in place
    python scripts/param_tables.py --check docs/nodes.md   # exit 1 if a table is out of date

In the document each table sits between ``<!-- params:NODE -->`` and ``<!-- /params:NODE -->``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON_PACKAGES = ("frs_control", "frs_steering", "frs_vlm_bridge", "frs_sim", "frs_bringup")

# Document the source tree (as the tests do), not the snapshot installed into the venv.
sys.path[:0] = [str(REPO_ROOT / name) for name in PYTHON_PACKAGES]
from frs_bringup.stacks import EPISODE_RUNNER, STACKS  # noqa: E402 (source tree first)

#: node name -> "module:Class" of the node that declares its parameters (every stack's nodes).
NODES: dict[str, str] = {
    spec.name: f"{spec.module}:{spec.cls}"
    for spec in (*(node for stack in STACKS.values() for node in stack.nodes), EPISODE_RUNNER)
}

#: Parameters rclpy declares on every node; not ours to document.
BUILTIN = {"use_sim_time", "start_type_description_service"}

_TYPE_NAMES = {
    1: "bool",
    2: "int",
    3: "float",
    4: "string",
    5: "byte[]",
    6: "bool[]",
    7: "int[]",
    8: "float[]",
    9: "string[]",
}


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _value(value: object) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | tuple) or type(value).__name__ == "array":
        items = ", ".join(_value(v).strip("`") for v in value)
        return f"`[{items}]`"
    if isinstance(value, float):
        return f"`{value!r}`"
    return f"`{value}`"


def _range(descriptor: object) -> str:
    for ranges in (descriptor.floating_point_range, descriptor.integer_range):
        for r in ranges:
            step = getattr(r, "step", 0)
            text = f"{r.from_value:g} .. {r.to_value:g}"
            return text + (f", step {step:g}" if step and step != 1 else "")
    return ""


def node_table(node: object) -> str:
    """One markdown table: name, type, default, read-only, range, description."""
    rows = [
        "| parameter | type | default | read-only | range | description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in sorted(node._parameters):  # noqa: SLF001 - rclpy keeps no public listing
        if name in BUILTIN:
            continue
        descriptor = node.describe_parameter(name)
        parameter = node.get_parameter(name)
        rows.append(
            f"| `{name}` | {_TYPE_NAMES.get(descriptor.type, '?')} | {_value(parameter.value)} "
            f"| {'yes' if descriptor.read_only else 'no'} | {_range(descriptor)} "
            f"| {_cell(descriptor.description)} |"
        )
    return "\n".join(rows)


def tables(names: list[str]) -> dict[str, str]:
    """Construct each named node in a private context and return its table."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(args=["--ros-args", "--log-level", "warn"], context=context)
    out: dict[str, str] = {}
    try:
        for name in names:
            module, cls = NODES[name].split(":")
            node_class: Callable[..., object] = getattr(importlib.import_module(module), cls)
            node = node_class(context=context)
            try:
                out[name] = node_table(node)
            finally:
                node.destroy_node()
    finally:
        context.try_shutdown()
    return out


def _marked(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- params:{name} -->\n)(.*?)(<!-- /params:{name} -->)", re.DOTALL)


def refresh(text: str, generated: dict[str, str]) -> str:
    """``text`` with each marked table replaced by its generated one."""
    for name, table in generated.items():
        text = _marked(name).sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, help="refresh the marked tables in this file")
    group.add_argument("--check", type=Path, help="exit 1 if a marked table is out of date")
    parser.add_argument("--nodes", nargs="+", choices=sorted(NODES), default=list(NODES))
    args = parser.parse_args(argv)

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    generated = tables(args.nodes)
    target = args.write or args.check
    if target is None:
        for name, table in generated.items():
            print(f"### {name}\n\n{table}\n")
        return 0
    text = target.read_text()
    missing = [name for name in generated if not _marked(name).search(text)]
    if missing:
        print(f"param_tables: error: {target} has no marked table for {missing}", file=sys.stderr)
        return 2
    updated = refresh(text, generated)
    if args.check:
        if updated != text:
            print(f"param_tables: {target} is out of date; run with --write", file=sys.stderr)
            return 1
        return 0
    target.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
