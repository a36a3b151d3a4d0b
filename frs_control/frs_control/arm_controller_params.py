"""The arm controller's parameters: declarations, and the settings objects built from them.

Pure functions of a parameter getter (``name -> value``), so limits and gripper settings are
checked without a node; the node declares :data:`PARAMETERS` and calls these in
``on_configure``. Parameters marked dynamic may change while the node runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from frs_control.execution import (
    FR3_JOINT_LOWER,
    FR3_JOINT_UPPER,
    FR3_JOINT_VELOCITY,
    N_JOINTS,
    ExecutionLimits,
)
from frs_control.gripper import GRIPPER_OUTPUTS, FrankaGripperSettings, GripperLatch
from frs_control.ros_params import RESULT_TIMEOUT, ParameterSpec, float_range, int_range

#: Command interfaces this package streams to itself (the simulated robot takes both).
STREAMED_OUTPUTS = ("forward_velocity", "joint_trajectory")
#: Command interfaces the controller can use.
OUTPUTS = (*STREAMED_OUTPUTS, "moveit")
#: Parameters that may change while the node runs.
DYNAMIC = ("watchdog_period", "chunk_timeout", "position_gain")

Getter = Callable[[str], Any]

_LIMITS = ExecutionLimits()


def _dynamic(extra: dict[str, Any]) -> dict[str, Any]:
    return {**extra, "read_only": False}


PARAMETERS: list[ParameterSpec] = [
    ("autostart", True, "configure and activate on start-up (no lifecycle manager)", {}),
    ("output", "forward_velocity", f"command interface, one of {list(OUTPUTS)}", {}),
    ("control_rate", 100.0, "Hz of the command stream and checks", float_range(1.0, 1000.0)),
    (
        "watchdog_period",
        0.25,
        "s; joint states older than this stop the arm (dynamic)",
        _dynamic(float_range(0.01, 5.0)),
    ),
    (
        "chunk_timeout",
        0.5,
        "s after a chunk's last row without a new chunk before holding stops (dynamic)",
        _dynamic(float_range(0.0, 10.0)),
    ),
    (
        "position_gain",
        5.0,
        "1/s; P-gain toward the interpolated target on top of feedforward (dynamic)",
        _dynamic(float_range(0.0, 100.0)),
    ),
    ("late_tolerance", _LIMITS.late_tolerance, "s a row may be overdue", float_range(0.0, 1.0)),
    (
        "future_tolerance",
        _LIMITS.future_tolerance,
        "s an observation stamp may be ahead of this clock",
        float_range(0.0, 5.0),
    ),
    (
        "max_row_translation",
        _LIMITS.max_row_translation,
        "m per ee_delta row; larger rows are rejected",
        float_range(0.001, 0.5),
    ),
    (
        "max_row_rotation",
        _LIMITS.max_row_rotation,
        "rad per ee_delta row; larger rows are rejected",
        float_range(0.001, 3.2),
    ),
    (
        "max_ee_speed",
        _LIMITS.max_ee_speed,
        "m/s (row translation / dt); faster ee_delta rows are rejected",
        float_range(0.01, 3.0),
    ),
    (
        "reject_velocity_factor",
        _LIMITS.reject_velocity_factor,
        "joint_velocity rows above this times the velocity limit are rejected",
        float_range(1.0, 10.0),
    ),
    ("joint_lower", list(FR3_JOINT_LOWER), "rad, FR3 joint position lower limits", {}),
    ("joint_upper", list(FR3_JOINT_UPPER), "rad, FR3 joint position upper limits", {}),
    ("joint_velocity_limits", list(FR3_JOINT_VELOCITY), "rad/s, FR3 joint velocity", {}),
    ("workspace_low", list(_LIMITS.workspace_low), "m, EE goal box min (base frame)", {}),
    ("workspace_high", list(_LIMITS.workspace_high), "m, EE goal box max (base frame)", {}),
    ("ik_iterations", 20, "DLS iterations per ee_delta row", int_range(1, 200)),
    ("joint_prefix", "fr3_", "arm joints are <prefix>joint1..7", {}),
    (
        "gripper_output",
        "topic",
        f"gripper interface, one of {list(GRIPPER_OUTPUTS)}: topic = "
        "gripper_controller/commands stream, franka = franka_gripper move/grasp actions",
        {},
    ),
    ("franka_gripper_namespace", "franka_gripper", "franka_gripper node's namespace", {}),
    ("gripper_open_width", 0.08, "m; franka move goal width to open", float_range(0.0, 0.08)),
    ("gripper_speed", 0.1, "m/s of franka move / grasp goals", float_range(0.001, 0.2)),
    ("grasp_force", 20.0, "N of franka grasp goals", float_range(1.0, 140.0)),
    ("grasp_epsilon", 0.08, "m; franka grasp inner/outer width tolerance", float_range(0.0, 0.08)),
    ("gripper_close_above", 0.6, "franka: close at gripper >= this", float_range(0.0, 1.0)),
    ("gripper_open_below", 0.4, "franka: open at gripper <= this", float_range(0.0, 1.0)),
    ("base_frame_id", "fr3_link0", "frame every chunk must name (or leave empty)", {}),
    (
        "max_pending_goals",
        32,
        "accepted goals that may wait for planning; more are refused in the goal callback",
        int_range(1, 10000),
    ),
    RESULT_TIMEOUT,
]


def _floats(get: Getter, name: str, size: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in get(name))
    if len(values) != size:
        raise ValueError(f"{name} needs {size} values, got {len(values)}")
    if not all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite, got {values}")
    return values


def limits_from_parameters(get: Getter) -> ExecutionLimits:
    """Execution limits from the parameters; ValueError naming the first inconsistent one."""
    lower = _floats(get, "joint_lower", N_JOINTS)
    upper = _floats(get, "joint_upper", N_JOINTS)
    velocity = _floats(get, "joint_velocity_limits", N_JOINTS)
    low = _floats(get, "workspace_low", 3)
    high = _floats(get, "workspace_high", 3)
    if np.any(np.asarray(lower) >= np.asarray(upper)):
        raise ValueError("joint_lower must be below joint_upper")
    if np.any(np.asarray(velocity) <= 0.0):
        raise ValueError("joint_velocity_limits must be positive")
    if np.any(np.asarray(low) >= np.asarray(high)):
        raise ValueError("workspace_low must be below workspace_high")
    return ExecutionLimits(
        joint_lower=lower,
        joint_upper=upper,
        joint_velocity=velocity,
        workspace_low=low,  # type: ignore[arg-type]
        workspace_high=high,  # type: ignore[arg-type]
        max_row_translation=float(get("max_row_translation")),
        max_row_rotation=float(get("max_row_rotation")),
        max_ee_speed=float(get("max_ee_speed")),
        reject_velocity_factor=float(get("reject_velocity_factor")),
        future_tolerance=float(get("future_tolerance")),
        late_tolerance=float(get("late_tolerance")),
    )


def check_output(get: Getter) -> str:
    """The command interface, or ValueError saying what can be used instead."""
    output = str(get("output"))
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if output == "moveit":
        try:
            import moveit.planning  # noqa: F401
        except ImportError:
            raise ValueError(
                "output 'moveit' needs moveit_py, which is not installed here; "
                "use output:=forward_velocity or output:=joint_trajectory"
            ) from None
        raise ValueError(
            "output 'moveit' is not implemented yet; use joint_trajectory with MoveIt's "
            "joint_trajectory_controller"
        )
    return output


def franka_gripper_settings(get: Getter) -> tuple[FrankaGripperSettings, GripperLatch]:
    """franka_gripper goal fields and the open/close hysteresis (ValueError if inconsistent)."""
    latch = GripperLatch(
        close_above=float(get("gripper_close_above")),
        open_below=float(get("gripper_open_below")),
    )
    settings = FrankaGripperSettings(
        namespace=str(get("franka_gripper_namespace")),
        open_width=float(get("gripper_open_width")),
        speed=float(get("gripper_speed")),
        force=float(get("grasp_force")),
        epsilon=float(get("grasp_epsilon")),
    )
    return settings, latch


def joint_names(get: Getter) -> list[str]:
    """The arm's joint names in order: ``<joint_prefix>joint1..7``."""
    prefix = str(get("joint_prefix"))
    return [f"{prefix}joint{i}" for i in range(1, N_JOINTS + 1)]
