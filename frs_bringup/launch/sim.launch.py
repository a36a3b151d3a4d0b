"""Simulated FRS stack: MuJoCo Panda, arm controller, steering, proposer (and rviz).

    ros2 launch frs_bringup sim.launch.py [reasoner:=scripted|human|vlm] [use_rviz:=true]
        [namespace:=] [params_file:=<yaml>] [run_episodes:=true]

Without ros2 launch (PyPI-wheel venvs), `python -m frs_bringup.sim_demo` composes the same nodes
from the same YAML in one process.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition


def _autostart(node: LifecycleNode) -> list:
    """Configure the lifecycle node at start and activate it once configured."""
    configure = EmitEvent(
        event=ChangeState(
            lifecycle_node_matcher=matches_action(node),
            transition_id=Transition.TRANSITION_CONFIGURE,
        )
    )
    activate = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node,
            goal_state="inactive",
            entities=[
                EmitEvent(
                    event=ChangeState(
                        lifecycle_node_matcher=matches_action(node),
                        transition_id=Transition.TRANSITION_ACTIVATE,
                    )
                )
            ],
        )
    )
    return [activate, configure]


def generate_launch_description() -> LaunchDescription:
    namespace = LaunchConfiguration("namespace")
    params = LaunchConfiguration("params_file")
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the stack"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution(
                [FindPackageShare("frs_bringup"), "config", "sim.yaml"]
            ),
            description="Node parameters",
        ),
        DeclareLaunchArgument(
            "reasoner", default_value="scripted", description="scripted|human|vlm"
        ),
        DeclareLaunchArgument("use_rviz", default_value="true", description="Start rviz2"),
        DeclareLaunchArgument(
            "run_episodes", default_value="false", description="Run the episode runner"
        ),
    ]
    controller = LifecycleNode(
        package="frs_control",
        executable="arm_controller",
        name="arm_controller",
        namespace=namespace,
        parameters=[params],
        output="screen",
    )
    steering = LifecycleNode(
        package="frs_steering",
        executable="steering",
        name="steering",
        namespace=namespace,
        parameters=[params],
        output="screen",
    )
    nodes = [
        Node(
            package="frs_sim",
            executable="sim_robot",
            name="sim_robot",
            namespace=namespace,
            parameters=[params],
            output="screen",
        ),
        controller,
        steering,
        Node(
            package="frs_vlm_bridge",
            executable="proposer",
            name="proposer",
            namespace=namespace,
            parameters=[params, {"reasoner": LaunchConfiguration("reasoner")}],
            output="screen",
        ),
        Node(
            package="frs_bringup",
            executable="episode_runner",
            name="episode_runner",
            namespace=namespace,
            parameters=[params],
            output="screen",
            condition=IfCondition(LaunchConfiguration("run_episodes")),
        ),
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            output="log",
            arguments=[
                "-d",
                PathJoinSubstitution([FindPackageShare("frs_bringup"), "rviz", "frs.rviz"]),
            ],
            condition=IfCondition(LaunchConfiguration("use_rviz")),
        ),
    ]
    return LaunchDescription([*args, *nodes, *_autostart(controller), *_autostart(steering)])
