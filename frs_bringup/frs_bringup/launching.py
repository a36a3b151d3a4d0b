"""Launch entities of a stack (:mod:`frs_bringup.stacks`): what every launch file returns.

Needs ``launch`` / ``launch_ros`` (rigs and the docker image; not installable from PyPI wheels,
where ``sim_demo`` starts the simulated stacks instead).

For a stack it declares the common launch arguments (``namespace``, ``params_file`` = the
stack's YAML, ``bring_up``, ``use_rviz``, ``run_episodes`` for simulated stacks) and the
stack's own, starts each node with the parameter file, and makes this launch file the lifecycle
manager of the lifecycle nodes: they run with ``autostart: false`` and launch's lifecycle events
take them to ``bring_up`` (``unconfigured`` | ``inactive`` | ``active``, default the stack's):
configure at start, activate once configured.
"""

from __future__ import annotations

from collections.abc import Mapping

from launch import LaunchDescriptionEntity
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import IfCondition, UnlessCondition
from launch.events import matches_action
from launch.substitutions import EqualsSubstitution, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from frs_bringup.stacks import BRING_UP_STATES, EPISODE_RUNNER, NodeSpec, Stack


def _share(*parts: str) -> PathJoinSubstitution:
    return PathJoinSubstitution([FindPackageShare("frs_bringup"), *parts])


def _change_state(node: LifecycleNode, transition: int, **kwargs) -> EmitEvent:  # noqa: ANN003
    """Ask launch_ros to take ``node`` through ``transition`` (kwargs: e.g. a condition)."""
    event = ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition)
    return EmitEvent(event=event, **kwargs)


def lifecycle_events(node: LifecycleNode, bring_up: LaunchConfiguration) -> list:
    """Configure ``node`` at start unless ``bring_up`` is unconfigured; activate it once
    configured when ``bring_up`` is active (the handler is registered before the event)."""
    activate = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node,
            start_state="configuring",
            goal_state="inactive",
            entities=[_change_state(node, Transition.TRANSITION_ACTIVATE)],
        ),
        condition=IfCondition(EqualsSubstitution(bring_up, "active")),
    )
    configure = _change_state(
        node,
        Transition.TRANSITION_CONFIGURE,
        condition=UnlessCondition(EqualsSubstitution(bring_up, "unconfigured")),
    )
    return [activate, configure]


def stack_entities(
    stack: Stack, parameters: Mapping[str, Mapping[str, object]] | None = None
) -> list[LaunchDescriptionEntity]:
    """Launch arguments, nodes and lifecycle events of ``stack``.

    ``parameters`` adds per-node parameters (node name -> {name: value or substitution}) on
    top of the YAML, e.g. a rig's launch file deriving one from its own arguments.
    """
    namespace = LaunchConfiguration("namespace")
    params = LaunchConfiguration("params_file")
    bring_up = LaunchConfiguration("bring_up")
    entities: list[LaunchDescriptionEntity] = [
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the stack"),
        DeclareLaunchArgument(
            "params_file",
            default_value=_share("config", stack.params_file),
            description="Node parameters",
        ),
        DeclareLaunchArgument(
            "bring_up",
            default_value=stack.bring_up,
            choices=list(BRING_UP_STATES),
            description="State this launch takes the lifecycle nodes to",
        ),
        *(
            DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
            for a in stack.arguments
        ),
    ]
    extra = parameters or {}

    def node_parameters(spec: NodeSpec) -> list:
        values: dict[str, object] = {"autostart": False} if spec.lifecycle else {}
        values.update({name: LaunchConfiguration(arg) for name, arg in spec.launch_parameters})
        values.update(extra.get(spec.name, {}))
        return [params, values] if values else [params]

    events = []
    for spec in stack.nodes:
        node_class = LifecycleNode if spec.lifecycle else Node
        node = node_class(
            package=spec.package,
            executable=spec.executable,
            name=spec.name,
            namespace=namespace,
            parameters=node_parameters(spec),
            output="screen",
            # GNU nice runs the node at its old niceness when it may not raise priority.
            prefix=f"nice -n {spec.nice}" if spec.nice else None,
        )
        entities.append(node)
        if spec.lifecycle:
            events += lifecycle_events(node, bring_up)
    if stack.episodes:
        entities += [
            DeclareLaunchArgument(
                "run_episodes", default_value="false", description="Run the episode runner"
            ),
            Node(
                package=EPISODE_RUNNER.package,
                executable=EPISODE_RUNNER.executable,
                name=EPISODE_RUNNER.name,
                namespace=namespace,
                parameters=node_parameters(EPISODE_RUNNER),
                output="screen",
                condition=IfCondition(LaunchConfiguration("run_episodes")),
            ),
        ]
    if stack.rviz_config:
        entities += [
            DeclareLaunchArgument("use_rviz", default_value="true", description="Start rviz2"),
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                output="log",
                arguments=["-d", _share("rviz", stack.rviz_config)],
                condition=IfCondition(LaunchConfiguration("use_rviz")),
            ),
        ]
    return [*entities, *events]
