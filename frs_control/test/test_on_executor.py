"""``on_executor``: action requests made on the executor thread, and given up cleanly.

Real rclpy and Fast DDS: a ``SteerChunk`` action client whose server never answers (there is
none), its node spun by a thread of its own as the proposer spins its node.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import rclpy
from rclpy.action import ActionClient
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from frs_control.ros_executor import on_executor
from frs_msgs.action import SteerChunk


class SpunClient:
    """A node with an action client to nobody; ``spin()`` starts its executor thread."""

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.node: Node = rclpy.create_node("on_executor_test", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.client = ActionClient(self.node, SteerChunk, "frs/on_executor_test_nobody")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def spin(self) -> None:
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.02)

    def send(self) -> Callable[[], object]:
        return lambda: self.client.send_goal_async(SteerChunk.Goal())

    def pending(self) -> int:
        """Requests rclpy still keeps a record of (its private table: the leak in question)."""
        return len(self.client._pending_goal_requests)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self.client.destroy()
        self.node.destroy_node()
        self.context.try_shutdown()


@pytest.fixture
def spun() -> Iterator[SpunClient]:
    client = SpunClient()
    try:
        yield client
    finally:
        client.close()


def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        time.sleep(0.01)
    return predicate()


def test_an_unanswered_request_given_up_leaves_no_record(spun: SpunClient) -> None:
    spun.spin()
    given_up = on_executor(spun.node, spun.send())
    assert _until(lambda: spun.pending() == 1), "the request was not sent on the executor"
    time.sleep(0.2)
    assert not given_up.done()  # nobody answers
    still_waiting = on_executor(spun.node, spun.send())
    assert _until(lambda: spun.pending() == 2)

    given_up.cancel()  # the caller's timeout
    assert _until(lambda: spun.pending() == 1), "giving up left rclpy's record behind"
    time.sleep(0.1)
    assert not still_waiting.done() and spun.pending() == 1  # the other one still waits


def test_giving_up_before_the_executor_ran_it_sends_nothing(spun: SpunClient) -> None:
    sent: list[object] = []

    def send() -> object:
        sent.append(1)
        return spun.send()()

    given_up = on_executor(spun.node, send)  # queued: the executor is not spinning yet
    given_up.cancel()
    spun.spin()
    time.sleep(0.3)
    assert given_up.cancelled() and not sent and spun.pending() == 0
