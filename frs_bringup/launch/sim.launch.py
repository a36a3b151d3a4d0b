"""Simulated FRS stack: MuJoCo Panda, arm controller, steering, proposer (and rviz).

    ros2 launch frs_bringup sim.launch.py [reasoner:=scripted|human|vlm] [use_rviz:=true]
        [namespace:=] [params_file:=<yaml>] [run_episodes:=true]
        [bring_up:=active|inactive|unconfigured]

The nodes and their options are the ``sim`` entry of frs_bringup.stacks (also what
``python -m frs_bringup.sim_demo`` starts where ros2 launch is not installed); this launch file
configures and activates the lifecycle nodes.
"""

from launch import LaunchDescription

from frs_bringup.launching import stack_entities
from frs_bringup.stacks import get_stack


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(stack_entities(get_stack("sim")))
