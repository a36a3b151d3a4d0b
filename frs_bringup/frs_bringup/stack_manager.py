"""The lifecycle manager of a stack where no launch file is: brings it up, stops it cleanly.

``sim_demo`` is the manager of the stacks it starts (one process per node, or composed in its
process): the lifecycle nodes run with ``autostart:=false`` and this node takes them to the
stack's ``bring_up`` state through their ``<node>/change_state`` services, the same services
``ros2 lifecycle set`` and launch's lifecycle events use. On the way out it stops the stack so
that nothing is torn down under a running goal: each lifecycle node is deactivated (steering
aborts its running goal between integration steps, the arm controller stops the arm), then the
manager waits until the node's action servers report no goal in progress (their
``_action/status`` topics), and only then may the node's process be stopped.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from action_msgs.msg import GoalStatus, GoalStatusArray
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.client import Client
from rclpy.executors import Executor
from rclpy.node import Node
from rclpy.qos import qos_profile_action_status_default

from frs_bringup.stacks import BRING_UP_STATES, NodeSpec, Stack

#: Goal states that mean a goal is still in progress on its server.
_IN_PROGRESS = (
    GoalStatus.STATUS_ACCEPTED,
    GoalStatus.STATUS_EXECUTING,
    GoalStatus.STATUS_CANCELING,
)
#: Transitions from one bring-up state to the next.
_UP = {"inactive": Transition.TRANSITION_CONFIGURE, "active": Transition.TRANSITION_ACTIVATE}


def call_service(executor: Executor, client: Client, request, timeout_s: float):  # noqa: ANN001, ANN201
    """Call a service, spinning ``executor`` until the answer; RuntimeError on a timeout."""
    if not client.wait_for_service(timeout_sec=timeout_s):
        raise RuntimeError(f"service {client.srv_name} not available after {timeout_s} s")
    future = client.call_async(request)
    spin_until(executor, future.done, timeout_s)
    if not future.done():
        client.remove_pending_request(future)
        raise RuntimeError(f"service {client.srv_name} did not answer in {timeout_s} s")
    return future.result()


def spin_until(executor: Executor, condition: Callable[[], bool], timeout_s: float) -> bool:
    """Spin ``executor`` until ``condition()`` holds (True) or ``timeout_s`` passes (False).

    A ``spin_once`` loop: ``spin_until_future_complete`` costs 5-9 ms per call on Jazzy.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        executor.spin_once(timeout_sec=0.05)
    return True


class StackManager(Node):
    """Drives a stack's lifecycle nodes over their services and drains their goals."""

    def __init__(self, stack: Stack, **kwargs) -> None:  # noqa: ANN003 - rclpy Node kwargs
        super().__init__("frs_stack_manager", **kwargs)
        self._stack = stack
        self._change: dict[str, Client] = {}
        self._get: dict[str, Client] = {}
        for spec in stack.lifecycle_nodes:
            self._change[spec.name] = self.create_client(ChangeState, f"{spec.name}/change_state")
            self._get[spec.name] = self.create_client(GetState, f"{spec.name}/get_state")
        # Latest goal states per action server (transient local: the last array on joining).
        self._goals: dict[str, tuple[int, ...]] = {}
        for spec in stack.nodes:
            for action in spec.actions:
                self._goals[action] = ()
                self.create_subscription(
                    GoalStatusArray,
                    f"{action}/_action/status",
                    functools.partial(self._on_status, action),
                    qos_profile_action_status_default,
                )

    def _on_status(self, action: str, msg: GoalStatusArray) -> None:
        self._goals[action] = tuple(int(s.status) for s in msg.status_list)

    def bring_up(self, executor: Executor, target: str = "", timeout_s: float = 120.0) -> None:
        """Take every lifecycle node to ``target`` (default: the stack's ``bring_up``).

        Each transition is asked of all nodes at once (steering loads its model meanwhile);
        RuntimeError names the nodes that did not make it (their own logs say why).
        """
        target = target or self._stack.bring_up
        if target not in BRING_UP_STATES:
            raise ValueError(f"bring-up state must be one of {BRING_UP_STATES}, not {target!r}")
        deadline = time.monotonic() + timeout_s
        for state in BRING_UP_STATES[1 : BRING_UP_STATES.index(target) + 1]:
            futures = {}
            for name, client in self._change.items():
                remaining = max(0.0, deadline - time.monotonic())
                if not client.wait_for_service(timeout_sec=remaining):
                    raise RuntimeError(f"{name}: no lifecycle services after {timeout_s} s")
                request = ChangeState.Request(transition=Transition(id=_UP[state]))
                futures[name] = client.call_async(request)
            pending = list(futures.values())
            spin_until(
                executor,
                lambda pending=pending: all(f.done() for f in pending),
                max(0.0, deadline - time.monotonic()),
            )
            failed = [n for n, f in futures.items() if not (f.done() and f.result().success)]
            if failed:
                raise RuntimeError(
                    f"{', '.join(failed)} did not become {state} (see the node's log)"
                )

    def state(self, executor: Executor, name: str, timeout_s: float = 5.0) -> int | None:
        """The primary state id of lifecycle node ``name``; None when it does not answer."""
        try:
            reply = call_service(executor, self._get[name], GetState.Request(), timeout_s)
        except RuntimeError:
            return None
        return int(reply.current_state.id)

    def busy(self, spec: NodeSpec) -> list[str]:
        """The node's action servers that report a goal in progress."""
        return [a for a in spec.actions if any(s in _IN_PROGRESS for s in self._goals.get(a, ()))]

    def wait_idle(
        self, executor: Executor, settle_s: float = 0.25, timeout_s: float = 10.0
    ) -> bool:
        """Wait until no action server of the stack has had a goal in progress for ``settle_s``.

        Once nothing sends new goals (the episode runner has switched the proposer off), this
        lets the goal in flight finish; ``settle_s`` spans the gap between a proposer's steering
        result and its execution goal. False (logged) on ``timeout_s``.
        """
        quiet_since = [time.monotonic()]

        def settled() -> bool:
            now = time.monotonic()
            if any(self.busy(spec) for spec in self._stack.nodes):
                quiet_since[0] = now
            return now - quiet_since[0] >= settle_s

        if spin_until(executor, settled, timeout_s):
            return True
        busy = [a for spec in self._stack.nodes for a in self.busy(spec)]
        self.get_logger().warning(f"goals still in progress on {busy} after {timeout_s} s")
        return False

    def quiesce(self, executor: Executor, spec: NodeSpec, timeout_s: float = 10.0) -> bool:
        """Deactivate ``spec`` if active, then wait until its goals are over; False if not."""
        if spec.lifecycle and self.state(executor, spec.name) == State.PRIMARY_STATE_ACTIVE:
            deactivate = Transition(id=Transition.TRANSITION_DEACTIVATE)
            request = ChangeState.Request(transition=deactivate)
            try:
                call_service(executor, self._change[spec.name], request, timeout_s)
            except RuntimeError as error:
                self.get_logger().warning(f"{spec.name}: not deactivated: {error}")
                return False
        if spin_until(executor, lambda: not self.busy(spec), timeout_s):
            return True
        self.get_logger().warning(f"{spec.name}: goals still running on {self.busy(spec)}")
        return False
