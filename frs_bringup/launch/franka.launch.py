"""FRS on a real Franka (FR3) with franka_ros2: controller, steering, proposer (and rviz).

    ros2 launch frs_bringup franka.launch.py robot_ip:=<ip> [use_fake_hardware:=false]
        [load_gripper:=true] [use_rviz:=true] [namespace:=] [reasoner:=human|vlm]
        [params_file:=<yaml>] [bring_up:=unconfigured|inactive|active] [stack:=franka]

``stack:=franka_droid`` runs the DROID rig configuration (config/franka_droid.yaml: cameras,
joint-velocity policy at 15 Hz through the ``droid`` observation adapter).

It includes franka_bringup's robot launch (same argument names) and starts a ros2_control
forward velocity controller for the arm; the FRS arm controller streams joint velocities to it.
The FRS nodes are the ``franka`` entry of frs_bringup.stacks. By default (``bring_up``
unconfigured) the lifecycle nodes wait for an operator:
    ros2 lifecycle set /arm_controller configure && ros2 lifecycle set /arm_controller activate
Bring the robot up in a safe pose, keep the user stop in hand, and start with `reasoner:=human`.
"""

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from frs_bringup.launching import stack_entities
from frs_bringup.stacks import get_stack

FRANKA_STACKS = ("franka", "franka_droid")


def _frs_stack(context: LaunchContext) -> list:
    """The chosen stack's nodes; the Franka Hand is driven through franka_gripper's actions
    only when it is loaded."""
    gripper_output = PythonExpression(
        ["'franka' if '", LaunchConfiguration("load_gripper"), "' == 'true' else 'none'"]
    )
    return stack_entities(
        get_stack(LaunchConfiguration("stack").perform(context)),
        parameters={"arm_controller": {"gripper_output": gripper_output}},
    )


def generate_launch_description() -> LaunchDescription:
    namespace = LaunchConfiguration("namespace")
    args = [
        DeclareLaunchArgument("robot_ip", description="Hostname or IP of the Franka control box"),
        DeclareLaunchArgument("use_fake_hardware", default_value="false"),
        DeclareLaunchArgument("load_gripper", default_value="true"),
        DeclareLaunchArgument("stack", default_value="franka", choices=list(FRANKA_STACKS)),
    ]
    frs = [OpaqueFunction(function=_frs_stack)]
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
    # The stack's declarations (namespace, ...) come before the robot that reads them.
    return LaunchDescription([*args, *frs, robot, velocity_controller])
