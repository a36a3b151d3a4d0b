"""The stack definitions: which nodes make up each FRS stack, in one place.

Every way of starting a stack reads this module: the launch files (``sim.launch.py``,
``franka.launch.py``, ``stack.launch.py stack:=<name>`` through :mod:`frs_bringup.launching`),
``sim_demo`` (one process per node, or ``--one-process`` composition) and the test that checks
each stack's parameter YAML against the parameters its nodes declare. Adding a stack is one
:class:`Stack` entry in :data:`STACKS` plus its ``config/<name>.yaml``.

A Python module rather than a section of the parameter YAML: rcl's ``--params-file`` parser
reads every top-level key of that file as a node name, the launch files need the definition
before any YAML is chosen (``params_file:=`` may point anywhere), and frozen dataclasses give
the launch files, sim_demo and the tests one typed, checked structure. Pure Python: importable
without rclpy or launch.

Lifecycle: nodes with ``lifecycle=True`` are driven by exactly one manager. Their ``autostart``
parameter (default true, so ``ros2 run`` / ``python -m`` with no manager brings a node up) is
forced to false by every manager here: the launch files (configure/activate events) and
sim_demo (``<node>/change_state`` services) then take them to the stack's ``bring_up`` state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The lifecycle states a manager can bring a stack's lifecycle nodes to, in order.
BRING_UP_STATES = ("unconfigured", "inactive", "active")


@dataclass(frozen=True)
class NodeSpec:
    """One node of a stack: how launch runs it, how sim_demo runs or composes it."""

    name: str  # node name = its section in the stack's parameter YAML
    package: str  # ROS package (launch)
    executable: str  # console script of the package (launch, ros2 run)
    module: str  # ``python -m`` module (sim_demo, one process per node)
    cls: str  # node class in ``module`` (sim_demo --one-process composition)
    lifecycle: bool = False  # a lifecycle node: a manager configures and activates it
    actions: tuple[str, ...] = ()  # action servers it runs: a clean stop waits for their goals
    # Parameters set from launch arguments: (parameter name, launch argument name).
    launch_parameters: tuple[tuple[str, str], ...] = ()
    # Scheduling priority (nice value) of its process: lower runs first. Negative values need
    # privileges (root, CAP_SYS_NICE or an RLIMIT_NICE allowance); without them the process
    # keeps the niceness it was started with (see :func:`apply_niceness`).
    nice: int = 0


@dataclass(frozen=True)
class LaunchArgument:
    """A launch argument a stack declares beyond the common ones."""

    name: str
    default: str
    description: str


@dataclass(frozen=True)
class Stack:
    """A stack: its nodes in start order (stopped in reverse), parameter file and options."""

    name: str
    description: str
    nodes: tuple[NodeSpec, ...]
    params_file: str  # under frs_bringup/config
    bring_up: str = "active"  # state managers take the lifecycle nodes to (BRING_UP_STATES)
    episodes: bool = False  # a simulated robot with episodes: the episode runner can drive it
    rviz_config: str = "frs.rviz"  # under frs_bringup/rviz; "" = no rviz option
    arguments: tuple[LaunchArgument, ...] = ()

    def __post_init__(self) -> None:
        if self.bring_up not in BRING_UP_STATES:
            raise ValueError(f"stack {self.name}: bring_up must be one of {BRING_UP_STATES}")
        names = [node.name for node in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"stack {self.name}: node names repeat: {names}")

    def node(self, name: str) -> NodeSpec:
        """The node called ``name`` (KeyError if the stack has none)."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"stack {self.name} has no node {name!r}")

    @property
    def lifecycle_nodes(self) -> tuple[NodeSpec, ...]:
        """The lifecycle nodes, in start order."""
        return tuple(node for node in self.nodes if node.lifecycle)


#: Nice values by role (issue 14, a CPU oversubscribed by other work): the robot and the
#: controller keep time for the arm and need little CPU, so they go first; steering is on the
#: path from observation to chunk (a late chunk is a stale one), so it comes next; the
#: proposer, the episode runner and the recorder wait.
REAL_TIME_NICE = -10
HOT_PATH_NICE = -5

SIM_ROBOT = NodeSpec(
    name="sim_robot",
    package="frs_sim",
    executable="sim_robot",
    module="frs_sim.sim_robot_node",
    cls="SimRobotNode",
    nice=REAL_TIME_NICE,
)
ARM_CONTROLLER = NodeSpec(
    name="arm_controller",
    package="frs_control",
    executable="arm_controller",
    module="frs_control.arm_controller_node",
    cls="ArmControllerNode",
    lifecycle=True,
    actions=("frs/execute_chunk",),
    nice=REAL_TIME_NICE,
)
STEERING = NodeSpec(
    name="steering",
    package="frs_steering",
    executable="steering",
    module="frs_steering.steering_node",
    cls="SteeringNode",
    lifecycle=True,
    actions=("frs/steer_chunk",),
    nice=HOT_PATH_NICE,
)
PROPOSER = NodeSpec(
    name="proposer",
    package="frs_vlm_bridge",
    executable="proposer",
    module="frs_vlm_bridge.proposer_node",
    cls="ProposerNode",
    launch_parameters=(("reasoner", "reasoner"),),
)
#: Runs episodes on a stack with ``episodes``: sim_demo runs it in its own process; launch
#: starts it with ``run_episodes:=true``. Its parameters live in the stack's YAML too.
EPISODE_RUNNER = NodeSpec(
    name="episode_runner",
    package="frs_bringup",
    executable="episode_runner",
    module="frs_bringup.episode_runner",
    cls="EpisodeRunner",
)

STACKS: dict[str, Stack] = {
    stack.name: stack
    for stack in (
        Stack(
            name="sim",
            description="MuJoCo Panda, arm controller, steering, proposer (scripted reasoner)",
            nodes=(SIM_ROBOT, ARM_CONTROLLER, STEERING, PROPOSER),
            params_file="sim.yaml",
            episodes=True,
            arguments=(LaunchArgument("reasoner", "scripted", "scripted|human|vlm"),),
        ),
        Stack(
            name="droid",
            description=(
                "DROID-style rig in simulation: MuJoCo Panda with two exterior and a wrist "
                "camera, joint-velocity policy at 15 Hz (droid adapter), no reasoner"
            ),
            nodes=(SIM_ROBOT, ARM_CONTROLLER, STEERING, PROPOSER),
            params_file="droid.yaml",
            episodes=True,
            arguments=(LaunchArgument("reasoner", "none", "none|human|vlm"),),
        ),
        Stack(
            name="franka",
            description="real Franka (FR3, franka_ros2): arm controller, steering, proposer",
            nodes=(ARM_CONTROLLER, STEERING, PROPOSER),
            params_file="franka.yaml",
            # Hardware: an operator configures and activates the lifecycle nodes
            # (`ros2 lifecycle set /arm_controller configure`), or bring_up:=active.
            bring_up="unconfigured",
            arguments=(LaunchArgument("reasoner", "human", "human|vlm"),),
        ),
        Stack(
            name="franka_droid",
            description=(
                "real Franka as a DROID rig: two exterior + a wrist camera, a DROID-style "
                "joint-velocity policy at 15 Hz (droid adapter), 8 rows per chunk"
            ),
            nodes=(ARM_CONTROLLER, STEERING, PROPOSER),
            params_file="franka_droid.yaml",
            bring_up="unconfigured",
            arguments=(LaunchArgument("reasoner", "human", "human|vlm|none"),),
        ),
    )
}


def get_stack(name: str) -> Stack:
    """The stack called ``name``; a ValueError lists the known ones."""
    try:
        return STACKS[name]
    except KeyError:
        raise ValueError(f"unknown stack {name!r}; known: {sorted(STACKS)}") from None


def params_path(stack: Stack) -> Path:
    """The stack's parameter YAML (source tree or installed share directory)."""
    from frs_steering.package_data import find_package_file

    return find_package_file(
        "frs_bringup", Path(__file__).resolve().parents[1], "config", stack.params_file
    )


def apply_niceness(pid: int, nice: int) -> int:
    """Set process ``pid`` to niceness ``nice`` where allowed; the niceness it ends up with.

    Raising priority (a lower nice value than the process has) needs privileges; without them
    the process keeps its niceness, which is the documented fallback, not an error. A process
    that has already exited is left alone.
    """
    try:
        current = os.getpriority(os.PRIO_PROCESS, pid)
        if nice != current:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        return os.getpriority(os.PRIO_PROCESS, pid)
    except PermissionError:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except ProcessLookupError:
        return nice
