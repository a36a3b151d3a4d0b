"""How FRS nodes wait without holding their executor.

Every node spins a ``SingleThreadedExecutor``: rclpy's ``MultiThreadedExecutor`` re-polls its
wait set while a long callback runs elsewhere (measured: 40-50 % of a core per idle node in the
simulated stack). Long work (steering, streaming a chunk) instead runs as an ``async`` callback
awaiting a :func:`waking_future` that a worker thread or a timer completes.
"""

from __future__ import annotations

from rclpy.node import Node
from rclpy.task import Future


def waking_future(node: Node) -> Future:
    """A future that wakes ``node``'s executor when completed, from any thread.

    A coroutine awaiting a plain rclpy future resumes only when the executor next wakes for
    something else; a done callback makes completion itself schedule work, which wakes it.
    """
    future = Future(executor=node.executor)
    future.add_done_callback(lambda _future: None)
    return future
