"""Controller parameters -> limits / outputs / gripper settings, and the ROS message helpers."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import JointState

from frs_control import arm_controller_params as params
from frs_control.execution import ExecutionLimits
from frs_control.messages import (
    chunk_request,
    chunk_to_msg,
    joint_positions,
    joint_trajectory_msg,
    joint_velocities,
    ns_to_stamp,
    stamp_to_seconds,
)

DEFAULTS = {name: default for name, default, _description, _extra in params.PARAMETERS}


def _getter(**overrides: object):  # noqa: ANN202
    values = {**DEFAULTS, **overrides}
    return values.__getitem__


def test_defaults_give_the_default_limits() -> None:
    assert params.limits_from_parameters(_getter()) == ExecutionLimits()
    assert params.check_output(_getter()) == "forward_velocity"
    assert params.joint_names(_getter(joint_prefix="panda_")) == [
        f"panda_joint{i}" for i in range(1, 8)
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"joint_lower": [0.0] * 6}, "joint_lower needs 7 values"),
        ({"joint_upper": [-3.0] * 7}, "joint_lower must be below joint_upper"),
        ({"joint_velocity_limits": [0.0] * 7}, "must be positive"),
        ({"joint_velocity_limits": [float("nan")] * 7}, "must be finite"),
        ({"workspace_low": [0.0, 0.0]}, "workspace_low needs 3 values"),
        ({"workspace_high": [0.0, 0.0, 0.0]}, "workspace_low must be below workspace_high"),
    ],
)
def test_inconsistent_limits_are_refused_with_the_parameter_name(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        params.limits_from_parameters(_getter(**overrides))


def test_outputs_and_gripper_settings() -> None:
    with pytest.raises(ValueError, match="output must be one of"):
        params.check_output(_getter(output="cartesian"))
    with pytest.raises(ValueError, match="moveit_py"):
        params.check_output(_getter(output="moveit"))
    settings, latch = params.franka_gripper_settings(_getter(grasp_force=40.0))
    assert settings.force == 40.0 and (latch.open_below, latch.close_above) == (0.4, 0.6)
    with pytest.raises(ValueError, match="open_below < close_above"):
        params.franka_gripper_settings(_getter(gripper_open_below=0.7))


def test_dynamic_parameters_are_declared_writable() -> None:
    writable = {
        name for name, _d, _t, extra in params.PARAMETERS if extra.get("read_only") is False
    }
    assert writable == set(params.DYNAMIC)


def test_chunk_request_carries_every_field() -> None:
    rows = np.arange(24, dtype=np.float32).reshape(3, 8)
    msg = chunk_to_msg(
        rows,
        stamp=ns_to_stamp(1_500_000_000),
        frame_id="fr3_link0",
        action_space="joint_velocity",
        dt=1 / 15,
        dim_names=[],
        normalized=False,
    )
    request = chunk_request(msg, max_points=2)
    assert (request.action_space, request.horizon, request.dim) == ("joint_velocity", 3, 8)
    assert request.stamp == 1.5 and request.dt == pytest.approx(1 / 15)
    assert (request.max_points, request.frame_id, request.executed_rows) == (2, "fr3_link0", 2)
    np.testing.assert_array_equal(request.data, rows.reshape(-1))


def test_joint_trajectory_msg_times_and_positions() -> None:
    msg = joint_trajectory_msg(["a", "b"], [0.05, 1.25], np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert list(msg.joint_names) == ["a", "b"]
    assert [stamp_to_seconds(p.time_from_start) for p in msg.points] == pytest.approx([0.05, 1.25])
    assert [list(p.positions) for p in msg.points] == [[1.0, 2.0], [3.0, 4.0]]
    assert msg.header.stamp.sec == 0 and msg.header.stamp.nanosec == 0  # start on receipt


def test_joint_positions_reorders_and_refuses_missing_or_non_finite() -> None:
    names = [f"fr3_joint{i}" for i in range(1, 8)]
    msg = JointState(name=["finger", *reversed(names)], position=[0.04, *range(7, 0, -1)])
    np.testing.assert_array_equal(joint_positions(msg, names), np.arange(1, 8))
    assert joint_positions(JointState(name=names[:6], position=[0.0] * 6), names) is None
    bad = JointState(name=names, position=[0.0] * 6 + [float("inf")])
    assert joint_positions(bad, names) is None


def test_joint_velocities_are_optional_reordered_and_finite() -> None:
    names = [f"fr3_joint{i}" for i in range(1, 8)]
    order = ["finger", *reversed(names)]
    msg = JointState(name=order, position=[0.0] * 8, velocity=[9.0, *range(7, 0, -1)])
    np.testing.assert_array_equal(joint_velocities(msg, names), np.arange(1, 8))
    assert joint_velocities(JointState(name=order, position=[0.0] * 8), names) is None  # none sent
    short = JointState(name=order, position=[0.0] * 8, velocity=[0.0] * 5)
    assert joint_velocities(short, names) is None
    bad = JointState(name=order, position=[0.0] * 8, velocity=[0.0] * 7 + [float("nan")])
    assert joint_velocities(bad, names) is None
