"""The steering node's outgoing messages, built from a steering result (no rclpy node).

``SteerChunk`` results, ``SteeringDiagnostics``, the ``SteeringRecord`` a bag replays from, and
the rviz EE paths (reference vs refined vs unsteered). Stamps are the observation's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from visualization_msgs.msg import MarkerArray

from frs_control.messages import chunk_to_msg, ns_to_stamp
from frs_msgs.action import SteerChunk
from frs_msgs.msg import ActionChunk, PhaseTiming, SteeringDiagnostics, SteeringRecord
from frs_steering.adapters.base import ActionLayout, StampedObservation
from frs_steering.observation import padded_real, reference_cosine
from frs_steering.policy import ActionSpec
from frs_steering.ros_messages import path_markers
from frs_steering.steer import SteerResult
from frs_steering.steering_goals import GoalCanceled, GoalPreempted, Prepared, Served

MARKER_COLOURS = {  # namespace -> RGBA
    "reference": (1.0, 0.75, 0.0, 1.0),
    "refined": (0.1, 0.85, 0.2, 1.0),
    "unsteered": (0.55, 0.55, 0.9, 0.8),
}
Result = SteerChunk.Result


def _chunk(rows: np.ndarray, layout: ActionLayout, stamp_ns: int, normalized: bool) -> ActionChunk:
    return chunk_to_msg(
        rows,
        stamp=ns_to_stamp(stamp_ns),
        frame_id=layout.frame_id,
        action_space=layout.action_space,
        dt=layout.control_dt,
        dim_names=layout.dim_names,
        normalized=normalized,
    )


def goal_feedback(
    goal_handle: Any, context_ok: Callable[[], bool]
) -> Callable[[str, int, int], None]:
    """A :class:`StepMonitor` feedback publisher for one goal; stops the goal (GoalCanceled) once
    the node is shutting down and its publisher is gone."""

    def publish(phase: str, step: int, total: int) -> None:
        if not context_ok():
            raise GoalCanceled
        goal_handle.publish_feedback(SteerChunk.Feedback(phase=phase, step=step, total_steps=total))

    return publish


def refused(reason: str) -> Served:
    """A goal refused before steering (bad goal, no observation): aborted with the reason."""
    return Served("abort", Result(outcome=Result.OUTCOME_REJECTED, reason=reason))


def stopped(error: Exception, *, active: bool, cancel_requested: bool) -> Served:
    """How a goal whose steering raised ``error`` ends: canceled by the client or by the node
    stopping, preempted by a newer goal, or failed (``ValueError`` / ``RuntimeError``; a node
    that stopped mid-call reports it as stopped, not as a steering failure)."""
    if isinstance(error, GoalCanceled):
        reason = "canceled by the client" if active else "node deactivated"
        transition = "canceled" if cancel_requested else "abort"
        return Served(transition, Result(outcome=Result.OUTCOME_CANCELED, reason=reason))
    if isinstance(error, GoalPreempted):
        reason = "preempted by a newer goal"
        return Served("abort", Result(outcome=Result.OUTCOME_PREEMPTED, reason=reason))
    if not active:
        return Served("abort", Result(outcome=Result.OUTCOME_CANCELED, reason="stopped"))
    reason = f"steering failed: {error}"
    return Served("abort", Result(outcome=Result.OUTCOME_FAILED, reason=reason))


def result_msg(
    result: SteerResult,
    spec: ActionSpec,
    layout: ActionLayout,
    observation: StampedObservation,
    reference_real: torch.Tensor | None,
    prepare_s: float,
    started: float,
) -> Any:
    """A succeeded ``SteerChunk`` result: refined (real units, padded), reference, noise,
    unsteered sample and diagnostics, all stamped with the observation."""
    stamp_ns = observation.stamp_ns
    msg = Result(outcome=Result.OUTCOME_SUCCEEDED)
    msg.refined = _chunk(padded_real(spec, result.chunk_real[0]), layout, stamp_ns, False)
    if reference_real is not None:
        msg.reference = _chunk(result.reference[0].cpu().numpy(), layout, stamp_ns, True)
    if result.noise is not None:
        msg.noise = _chunk(result.noise[0].cpu().numpy(), layout, stamp_ns, True)
    if result.base_chunk_real is not None:
        unsteered = padded_real(spec, result.base_chunk_real[0])
        msg.unsteered = _chunk(unsteered, layout, stamp_ns, False)
    msg.diagnostics = diagnostics_msg(result, reference_real is not None, prepare_s, started)
    msg.diagnostics.header.stamp = ns_to_stamp(stamp_ns)
    msg.diagnostics.header.frame_id = layout.frame_id
    return msg


def diagnostics_msg(
    result: SteerResult, has_reference: bool, prepare_s: float, started: float
) -> SteeringDiagnostics:
    """Noise statistics, reference agreement, NFE and per-phase timings of one call."""
    diag = result.diagnostics
    nan = float("nan")

    def first(value: torch.Tensor | None) -> float:
        return nan if value is None else float(value[0])

    cosine = nan
    if has_reference:
        cosine = reference_cosine(result.chunk[0], result.reference[0], result.steered[0])
    timings = [PhaseTiming(phase="observation", duration_ms=prepare_s * 1e3)]
    timings += [
        PhaseTiming(phase=phase, duration_ms=seconds * 1e3)
        for phase, seconds in diag.timings.items()
        if phase != "total"
    ]
    return SteeringDiagnostics(
        method=diag.method,
        solver=diag.solver,
        num_steps=diag.num_steps,
        noise_norm_ratio=first(diag.noise_rms),
        noise_log_density=first(diag.noise_log_density),
        round_trip_error=first(diag.round_trip_error),
        reference_distance=first(diag.reference_distance) if has_reference else nan,
        reference_cosine=cosine,
        nfe=diag.nfe,
        timings=timings,
        total_ms=(time.perf_counter() - started) * 1e3,
    )


def record_msg(
    goal: Any,
    prepared: Prepared,
    result: Any,
    include_unsteered: bool,
    checkpoint_sha256: str,
    input_topics: Sequence[str] = (),
) -> SteeringRecord:
    """Everything needed to replay this call offline (see frs_msgs/SteeringRecord): the goal as
    asked, and what was prepared from it (the request, the observation, the reference steered
    toward: the goal's or a reference policy's).

    ``input_topics`` name the adapter's streams in ``observation.input_stamps`` order;
    ``scene_stamp`` is the stamp of the first (0 when there is none).
    """
    request, observation, settings = prepared.request, prepared.observation, prepared.settings
    stream_stamps = list(observation.input_stamps.values())
    msg = SteeringRecord(
        input_topics=list(input_topics),
        input_stamps=[ns_to_stamp(stamp) for stamp in stream_stamps],
        requested_method=goal.method,
        num_steps=goal.num_steps,
        solver=goal.solver,
        noise_scale=goal.noise_scale,
        partial_time=goal.partial_time,
        num_samples=goal.num_samples,
        requested_seed=goal.seed,
        reference=prepared.reference,
        method=request.method,
        seed=request.seed,
        scene_stamp=ns_to_stamp(stream_stamps[0] if stream_stamps else 0),
        instruction=observation.instruction,
        max_translation=float(settings.max_translation),
        commanded_rows=int(settings.commanded_rows),
        command_rotation=bool(settings.command_rotation),
        include_unsteered=include_unsteered,
        checkpoint_sha256=checkpoint_sha256,
        refined=result.refined,
        reference_chunk=result.reference,
        noise=result.noise,
        unsteered=result.unsteered,
        diagnostics=result.diagnostics,
    )
    msg.header.stamp = ns_to_stamp(observation.stamp_ns)
    msg.header.frame_id = settings.frame_id
    return msg


def markers_msg(
    result: SteerResult,
    layout: ActionLayout,
    observation: StampedObservation,
    reference_real: torch.Tensor | None,
) -> MarkerArray:
    """EE paths from the current EE: reference (amber), refined (green), unsteered (blue)."""
    paths = {
        "reference": reference_real,
        "refined": result.chunk_real[0],
        "unsteered": None if result.base_chunk_real is None else result.base_chunk_real[0],
    }

    def path(real: torch.Tensor | None) -> np.ndarray | None:
        if real is None or observation.ee_position is None:
            return None
        return layout.translation_path(observation.ee_position, real, observation.jacobian)

    return path_markers(
        {name: (path(real), MARKER_COLOURS[name]) for name, real in paths.items()},
        stamp=ns_to_stamp(observation.stamp_ns),
        frame_id=layout.frame_id,
    )


__all__ = ["MARKER_COLOURS", "diagnostics_msg", "markers_msg", "record_msg", "result_msg"]
