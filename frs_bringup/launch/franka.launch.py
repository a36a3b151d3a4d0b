"""FRS on a real Franka (FR3) with franka_ros2: controller, steering, proposer (and rviz).

    ros2 launch frs_bringup franka.launch.py robot_ip:=<ip> [use_fake_hardware:=false]
        [load_gripper:=true] [use_rviz:=true] [namespace:=] [reasoner:=human|vlm]
        [params_file:=<yaml>]

It includes franka_bringup's robot launch (same argument names) and starts a ros2_control
forward velocity controller for the arm; the FRS arm controller streams joint velocities to it.
Bring the robot up in a safe pose, keep the user stop in hand, and start with `reasoner:=human`.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    namespace = LaunchConfiguration("namespace")
    params = LaunchConfiguration("params_file")
    args = [
        DeclareLaunchArgument("robot_ip", description="Hostname or IP of the Franka control box"),
        DeclareLaunchArgument("use_fake_hardware", default_value="false"),
        DeclareLaunchArgument("load_gripper", default_value="true"),
        DeclareLaunchArgument("use_rviz", default_value="true"),
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("reasoner", default_value="human", description="human|vlm"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution(
                [FindPackageShare("frs_bringup"), "config", "franka.yaml"]
            ),
        ),
    ]
    # The Franka Hand is driven through franka_gripper's actions only when it is loaded.
    gripper_output = PythonExpression(
        ["'franka' if '", LaunchConfiguration("load_gripper"), "' == 'true' else 'none'"]
    )
    robot = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("franka_bringup"), "launch", "franka.launch.py"])
        ),
        launch_arguments={
            "robot_ip": LaunchConfiguration("robot_ip"),
            "use_fake_hardware": LaunchConfiguration("use_fake_hardware"),
            "load_gripper": LaunchConfiguration("load_gripper"),
            "use_rviz": "false",
            "namespace": namespace,
        }.items(),
    )
    velocity_controller = Node(
        package="controller_manager",
        executable="spawner",
        namespace=namespace,
        arguments=["forward_velocity_controller", "--controller-manager", "controller_manager"],
        output="screen",
    )
    nodes = [
        LifecycleNode(
            package="frs_control",
            executable="arm_controller",
            name="arm_controller",
            namespace=namespace,
            parameters=[params, {"gripper_output": gripper_output}],
            output="screen",
        ),
        LifecycleNode(
            package="frs_steering",
            executable="steering",
            name="steering",
            namespace=namespace,
            parameters=[params],
            output="screen",
        ),
        Node(
            package="frs_vlm_bridge",
            executable="proposer",
            name="proposer",
            namespace=namespace,
            parameters=[params, {"reasoner": LaunchConfiguration("reasoner")}],
            output="screen",
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
    # The lifecycle nodes stay unconfigured on a rig until an operator brings them up:
    #   ros2 lifecycle set /arm_controller configure && ros2 lifecycle set /arm_controller activate
    return LaunchDescription([*args, robot, velocity_controller, *nodes])
