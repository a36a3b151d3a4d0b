"""How FRS nodes run: one single-threaded executor, waits that do not hold it, clean exits.

Every node spins a ``SingleThreadedExecutor``: rclpy's ``MultiThreadedExecutor`` re-polls its
wait set while a long callback runs elsewhere (measured: 40-50 % of a core per idle node in the
simulated stack). Long work (steering, streaming a chunk) instead runs as an ``async`` callback
awaiting a :func:`waking_future` that a worker thread or a timer completes.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence

import rclpy
from rclpy.event_handler import (
    PublisherEventCallbacks,
    QoSRequestedIncompatibleQoSInfo,
    SubscriptionEventCallbacks,
)
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_policy_name_from_kind,
)
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import Subscription
from rclpy.task import Future

#: Service QoS for action goals, results and cancels that arrive in bursts. rclpy's default
#: (reliable, keep-last 10) drops requests beyond 10 in flight on the server's request reader
#: and responses on either side's writer/reader: of 200 goals sent at once only 17-26 got an
#: answer (issue 14). Pass :data:`ACTION_BURST_QOS` to BOTH the ActionServer and its clients
#: (``ActionServer(..., **ACTION_BURST_QOS)``, same for ``ActionClient``).
BURST_SERVICE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=1000
)
ACTION_BURST_QOS: dict[str, QoSProfile] = {
    "goal_service_qos_profile": BURST_SERVICE_QOS,
    "result_service_qos_profile": BURST_SERVICE_QOS,
    "cancel_service_qos_profile": BURST_SERVICE_QOS,
}

#: Reliable, the last sample kept for late joiners (ROS's "latched"): instructions, announcements.
LATCHED_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
#: Reliable, volatile, keep-last 10: commands, references, records, diagnostics.
RELIABLE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10
)

#: Event callbacks that create no event handlers. rclpy's defaults give every publisher and
#: subscription two (incompatible QoS, incompatible type), and each is polled on every executor
#: pass: a configured steering node's idle pass took 0.27 ms with its 14, 0.16 ms without (a
#: bare action-server node: 0.15 ms), and a goal costs several passes. For endpoints whose QoS
#: cannot mismatch (best-effort, volatile subscriptions) or whose peer reports the mismatch.
NO_SUBSCRIPTION_EVENTS = SubscriptionEventCallbacks(use_default_callbacks=False)
NO_PUBLISHER_EVENTS = PublisherEventCallbacks(use_default_callbacks=False)


def latched_subscription_events(node: Node, topic: str) -> SubscriptionEventCallbacks:
    """Only an incompatible-QoS check for a :data:`LATCHED_QOS` subscription on ``topic``: a
    volatile or best-effort publisher (a plain ``ros2 topic pub``) never reaches it, and the
    warning says how to publish instead."""

    def warn(event: QoSRequestedIncompatibleQoSInfo) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        node.get_logger().warning(
            f"a publisher on {topic} offers incompatible QoS ({policy}): none of its messages "
            "arrive; publish them reliable and transient local (latched)"
        )

    return SubscriptionEventCallbacks(incompatible_qos=warn, use_default_callbacks=False)


def waking_future(node: Node) -> Future:
    """A future that wakes ``node``'s executor when completed, from any thread.

    A coroutine awaiting a plain rclpy future resumes only when the executor next wakes for
    something else; a done callback makes completion itself schedule work, which wakes it.
    """
    future = Future(executor=node.executor)
    future.add_done_callback(lambda _future: None)
    return future


#: s between checks for SIGINT / SIGTERM while a node waits for work.
SIGNAL_POLL_S = 0.2


def run_node(
    make_node: Callable[[], Node],
    args: Sequence[str] | None = None,
    on_exit: Callable[[Node], None] | None = None,
) -> None:
    """Spin one node until Ctrl-C / SIGTERM, then ``on_exit(node)`` BEFORE the context goes down.

    rclpy's own SIGINT handler would shut the context down first, so a last stop command could
    not be sent and a goal still running would fail to publish; here Ctrl-C arrives as
    KeyboardInterrupt instead. A lifecycle node with ``autostart`` is configured and activated
    (installs without a lifecycle manager); exits with 1 if it cannot be configured.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    # Also when started with SIGINT ignored (a background job of a script), and for SIGTERM.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    node = None
    exit_code = 0
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if node.has_parameter("autostart") and node.get_parameter("autostart").value:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
            else:
                node.get_logger().fatal("configure failed (see above); exiting")
                exit_code = 1
        while not exit_code and node.context.ok():
            # A bounded wait, not spin(): with rclpy's signal handling off, a node with no timer
            # would sit in rcl_wait forever and never run the Python SIGINT/SIGTERM handler.
            executor.spin_once(timeout_sec=SIGNAL_POLL_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            if on_exit is not None:
                on_exit(node)
            node.destroy_node()
        rclpy.try_shutdown()
    if exit_code:
        raise SystemExit(exit_code)


def take_waiting_messages(subscriptions: Sequence[Subscription]) -> None:
    """Run each subscription's callback on every message it has received, ahead of the
    executor's turn (call it on the executor thread, e.g. before work that needs them)."""
    for subscription in subscriptions:
        with subscription.handle:
            while (
                taken := subscription.handle.take_message(subscription.msg_type, subscription.raw)
            ) is not None:
                subscription.callback(taken[0])


def on_executor(node: Node, start: Callable[[], Future]) -> Future:
    """Call ``start`` (e.g. ``client.send_goal_async``) on ``node``'s executor thread; a future
    for the result of the future it returns, safe to wait on from any thread.

    rclpy's ActionClient registers a request only after sending it, unlocked: called from
    another thread, the executor can take the response in between, log "Ignoring unexpected
    goal response" and drop it, leaving the caller waiting for its whole timeout. Under CPU
    load this happened every few goals (issue 14: the proposer waited 5 s per lost goal).

    Cancel the returned future to give up: the request's own future is then canceled on the
    executor, which drops rclpy's record of the pending request (otherwise kept forever when
    no answer ever comes: one entry per unanswered goal).
    """
    outer = Future()
    inner: list[Future] = []

    def forward(request: Future) -> None:
        if outer.done():
            return
        if request.cancelled():
            outer.cancel()
        elif request.exception() is not None:
            outer.set_exception(request.exception())
        else:
            outer.set_result(request.result())

    def begin() -> None:
        if outer.cancelled():
            return
        try:
            request = start()
        except Exception as error:  # noqa: BLE001 - handed to whoever waits on ``outer``
            outer.set_exception(error)
            return
        inner.append(request)
        request.add_done_callback(forward)
        if outer.cancelled():
            request.cancel()

    def give_up(_outer: Future) -> None:
        if outer.cancelled() and inner and not inner[0].done():
            node.executor.create_task(inner[0].cancel)

    outer.add_done_callback(give_up)
    node.executor.create_task(begin)
    return outer
