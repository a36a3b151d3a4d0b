"""Any stack of frs_bringup.stacks by name: its nodes, parameter YAML and lifecycle bring-up.

    ros2 launch frs_bringup stack.launch.py stack:=<name> [params_file:=<yaml>] [namespace:=]
        [bring_up:=active|inactive|unconfigured] [use_rviz:=true] [<the stack's arguments>]

A stack added to frs_bringup.stacks (with its config/<name>.yaml) is launched here with no
launch file of its own. The robot side of a real rig (e.g. franka_bringup) is not included:
use the rig's own launch file (franka.launch.py) or bring the robot up first.
"""

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from frs_bringup.launching import stack_entities
from frs_bringup.stacks import STACKS, get_stack


def _stack(context: LaunchContext) -> list:
    return stack_entities(get_stack(LaunchConfiguration("stack").perform(context)))


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "stack", default_value="sim", choices=sorted(STACKS), description="Stack to run"
            ),
            OpaqueFunction(function=_stack),
        ]
    )
