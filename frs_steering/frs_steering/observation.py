"""Matching a robot's stamped messages into one observation, and a goal's method settings.

Shared by the steering node (live messages) and the bag replay (messages read back from a bag)
so both build bit-identical inputs: :class:`InputBuffers` keeps the last samples of
``joint_states`` and of each stream an observation adapter needs (parsed by that adapter), and
:meth:`InputBuffers.match` picks the joint sample for a requested stamp and, for every stream,
the sample nearest to it within a tolerance, waiting a bounded time for samples still in flight.
No rclpy. Problems raise :class:`ObservationError` naming what is missing.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from frs_steering.adapters.base import (
    JointSample,
    ObservationAdapter,
    ObservationError,
    Sample,
    stamp_of,
)
from frs_steering.policy import ActionSpec


class StampedBuffer:
    """The last ``size`` samples (anything with ``stamp_ns``) in arrival order (thread-safe)."""

    def __init__(self, size: int) -> None:
        self._items: deque[Any] = deque(maxlen=size)
        self._changed = threading.Condition()
        self._added = 0  # samples added in all

    def add(self, item: Any) -> None:
        with self._changed:
            self._items.append(item)
            self._added += 1
            self._changed.notify_all()

    def added(self) -> int:
        """How many samples were added in all (pass it to :meth:`wait_past`)."""
        with self._changed:
            return self._added

    def wait_past(self, added: int, timeout_s: float) -> None:
        """Until a sample beyond the first ``added`` arrives, or ``timeout_s`` has passed: a
        goal that overtook its observation resumes as the sample lands, not a poll later."""
        with self._changed:
            self._changed.wait_for(lambda: self._added > added, timeout_s)

    def nearest(self, stamp_ns: int | None, tolerance_ns: int) -> Any | None:
        """The sample closest to ``stamp_ns`` within the tolerance (None: the newest), or None."""
        with self._changed:
            items = list(self._items)
        if not items:
            return None
        if stamp_ns is None:
            return max(items, key=lambda item: item.stamp_ns)
        best = min(items, key=lambda item: abs(item.stamp_ns - stamp_ns))
        return best if abs(best.stamp_ns - stamp_ns) <= tolerance_ns else None

    def span(self) -> tuple[int, int] | None:
        """Oldest and newest stamp held (None when empty)."""
        with self._changed:
            stamps = [item.stamp_ns for item in self._items]
        return (min(stamps), max(stamps)) if stamps else None


class InputBuffers:
    """``joint_states`` and the adapter's streams, buffered and matched by stamp."""

    def __init__(self, adapter: ObservationAdapter, size: int) -> None:
        self.adapter = adapter
        self.joints = StampedBuffer(size)
        self.streams = {spec.key: StampedBuffer(size) for spec in adapter.streams()}

    def add_joints(self, msg: Any) -> bool:
        """Buffer a JointState; False (nothing buffered) if it lacks a joint or is not finite."""
        sample = self.adapter.joint_sample(msg)
        if sample is None:
            return False
        self.joints.add(sample)
        return True

    def add(self, key: str, msg: Any) -> None:
        """Buffer a message of stream ``key``; ObservationError (nothing buffered) if unusable."""
        self.streams[key].add(Sample(stamp_of(msg), self.adapter.parse(key, msg)))

    def match(
        self,
        stamp_ns: int,
        tolerance_ns: int,
        wait_s: float = 0.0,
        used: Mapping[str, int] | None = None,
        *,
        now_ns: int | None = None,
        max_age_s: float = math.inf,
    ) -> tuple[JointSample, dict[str, Sample]]:
        """The joint sample at ``stamp_ns`` (0 = the newest) and each stream's nearest sample.

        Samples still in flight (a goal can overtake its own observation) are waited for up
        to ``wait_s``; ObservationError names what is missing after that. ``used`` (stream key
        -> stamp, as a steering record lists them) asks for exactly those samples instead.
        With ``now_ns``, a joint sample older than ``max_age_s`` is refused as stale.
        """
        deadline = time.monotonic() + wait_s
        joints = self._wait_for(self.joints, stamp_ns or None, tolerance_ns, deadline)
        if joints is None:
            span = self.joints.span()
            if span is None:
                raise ObservationError("no observation: nothing received on joint_states yet")
            raise ObservationError(
                f"no observation at stamp {stamp_ns * 1e-9:.6f} s (+/- {tolerance_ns * 1e-9:g} s);"
                f" joint_states buffer spans {span[0] * 1e-9:.6f}..{span[1] * 1e-9:.6f} s"
            )
        age_s = math.inf if now_ns is None else (now_ns - joints.stamp_ns) * 1e-9
        if now_ns is not None and age_s > max_age_s:
            raise ObservationError(
                f"stale observation: stamp {joints.stamp_ns * 1e-9:.6f} s is {age_s:.3f} s old "
                f"(max_observation_age {max_age_s:g} s)"
            )
        samples: dict[str, Sample] = {}
        for spec in self.adapter.streams():
            within = max(tolerance_ns, int(spec.tolerance_s * 1e9))
            target = joints.stamp_ns
            if used is not None and spec.key in used:
                target, within = used[spec.key], 0
            sample = self._wait_for(self.streams[spec.key], target, within, deadline)
            if sample is None:
                raise ObservationError(
                    f"no observation: no {spec.topic} within {within * 1e-9:g} s of the "
                    f"joint_states stamp {joints.stamp_ns * 1e-9:.6f} s"
                )
            samples[spec.key] = sample
        return joints, samples

    @staticmethod
    def _wait_for(
        buffer: StampedBuffer, stamp_ns: int | None, tolerance_ns: int, deadline: float
    ) -> Any | None:
        """Nearest sample, waiting for arrivals until the deadline while none fits and none
        newer arrived."""
        while True:
            seen = buffer.added()
            found = buffer.nearest(stamp_ns, tolerance_ns)
            remaining = deadline - time.monotonic()
            if found is not None or stamp_ns is None or remaining <= 0:
                return found
            span = buffer.span()
            if span is not None and span[1] > stamp_ns + tolerance_ns:
                return None  # newer samples arrived and none fits: it will not come
            buffer.wait_past(seen, remaining)


def method_and_params(
    method: str,
    *,
    defer: bool,
    noise_scale: float,
    partial_time: float,
    num_samples: int,
    max_samples: int | None = None,
) -> tuple[str, dict[str, float | int]]:
    """The method that runs for a SteerChunk goal's settings and its :func:`steer` params.

    Empty = ``frs``; a deferring reference runs ``base`` (the policy acts on its own), except
    for ``noise_policy``, which needs no reference (the caller adds the network as the
    ``noise_policy`` param). ``partial_time`` / ``num_samples`` of 0 mean the method's
    default. ObservationError names an out-of-range setting.
    """
    method = method or "frs"
    if defer and method != "noise_policy":
        method = "base"
    params: dict[str, float | int] = {}
    if method in ("frs", "noise_policy"):
        if not (math.isfinite(noise_scale) and 0.0 <= noise_scale <= 10.0):
            raise ObservationError(f"noise_scale must be in [0, 10], got {noise_scale}")
        params["noise_scale"] = float(noise_scale)
    elif method == "partial_noising":
        if not (math.isfinite(partial_time) and 0.0 <= partial_time <= 1.0):
            raise ObservationError(f"partial_time must be in (0, 1], got {partial_time}")
        if partial_time > 0.0:
            params["noise_level"] = float(partial_time)
    elif method == "sample_rank":
        if max_samples is not None and num_samples > max_samples:
            raise ObservationError(f"num_samples {num_samples} exceeds max_samples {max_samples}")
        if num_samples > 0:
            params["num_samples"] = int(num_samples)
    return method, params


def reference_cosine(chunk: torch.Tensor, reference: torch.Tensor, steered: torch.Tensor) -> float:
    """Cosine similarity of one refined chunk and its reference over the steered elements
    (normalized space), as ``SteeringDiagnostics.reference_cosine`` reports it."""
    weights = steered.to(chunk.dtype)
    a, b = (chunk * weights).flatten(), (reference * weights).flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0, eps=1e-12))


def padded_real(spec: ActionSpec, real: torch.Tensor) -> np.ndarray:
    """Real-unit ``[horizon, num_real]`` rows placed in the policy's padded row layout."""
    rows = np.zeros(spec.chunk_shape, dtype=np.float32)
    rows[:, list(spec.real_dims)] = real.detach().cpu().numpy()
    return rows


__all__ = [
    "InputBuffers",
    "ObservationError",
    "StampedBuffer",
    "method_and_params",
    "padded_real",
    "reference_cosine",
]
