"""What the steering node does with a ``SteerChunk`` goal before and after steering (no rclpy).

Its parameter table, checking a goal's method settings into a :class:`SteerRequest`, stopping a
goal between integration steps (:class:`StepMonitor`), loading and checking a noise policy
against the flow policy, bounding the refined output. Kept out of the node so it is unit tested
without ROS and the node only wires parameters and interfaces.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from frs_control.messages import MessageError, check_time, stamp_to_ns
from frs_control.ros_params import float_range, int_range
from frs_steering.adapters.base import ReferenceSettings
from frs_steering.integrate import as_solver
from frs_steering.observation import ObservationError, method_and_params
from frs_steering.ros_messages import proposal_to_msg
from frs_steering.steer import SteerResult, available_methods, steer

METHOD_NOISE_POLICY = "noise_policy"
#: FRS toward the proposal of the node's reference policy instead of the goal's reference.
METHOD_REFERENCE_POLICY = "reference_policy"
METHOD_LEARNED_REVERSAL = "learned_reversal"

#: The steering node's parameters: (name, default, description, read_only, descriptor extras).
NODE_PARAMETERS: list[tuple[str, Any, str, bool, dict]] = [
    ("checkpoint", "", "dir, shipped name or lerobot:<dir>; empty = generalist", True, {}),
    ("observation_adapter", "tabletop", "tabletop | droid | module:Class", True, {}),
    ("noise_policy", "", "noise-policy checkpoint for method noise_policy", True, {}),
    (
        "reference_policy",
        "",
        "reference-policy checkpoint for method reference_policy (FRS toward its proposals)",
        True,
        {},
    ),
    (
        "residual_policy",
        "",
        "noise-policy checkpoint whose output moves FRS's noise in reference_policy goals "
        "(DSRL + FRS around a cloned reasoner)",
        True,
        {},
    ),
    (
        "learned_reversal",
        "",
        "learned-reversal checkpoint for method learned_reversal; reference_policy goals then "
        "run it in place of FRS's reversal (no reverse pass per chunk)",
        True,
        {},
    ),
    ("device", "cpu", "torch device of the policy", True, {}),
    ("torch_threads", 1, "torch intra-op threads", True, int_range(1, 64)),
    ("autostart", True, "configure and activate on start-up", True, {}),
    ("max_translation", 0.05, "m of EE travel per row at magnitude 1", True, float_range(1e-4, 1)),
    ("buffer_size", 200, "samples kept per input topic", True, int_range(1, 10000)),
    ("stamp_tolerance", 0.005, "s; samples this close match a stamp", False, float_range(0, 1)),
    ("max_observation_age", 0.5, "s; older observations are stale", False, float_range(0, 60)),
    ("observation_wait", 0.05, "s to wait for samples in flight", False, float_range(0, 1)),
    ("commanded_rows", 0, "rows the direction commands; 0 = all", False, int_range(0, 1000)),
    ("command_rotation", False, "also command zero rotation (ee_delta)", False, {}),
    ("max_num_steps", 1000, "largest num_steps of a goal", False, int_range(1, 100000)),
    ("max_samples", 64, "largest num_samples (sample_rank)", False, int_range(1, 4096)),
    (
        "max_normalized",
        5.0,
        "largest |reference| / |refined| in policy units",
        False,
        float_range(0.5, 1e3),
    ),
    ("include_unsteered", True, "also sample an unsteered chunk", False, {}),
    ("round_trip", False, "measure the reversal round-trip error (+K NFE)", False, {}),
    (
        "temperature",
        1.0,
        "scale of the policy's fresh noise (its own chunks, unsteered elements); < 1 samples "
        "nearer its modes",
        False,
        float_range(0, 2),
    ),
    ("publish_feedback", True, "action feedback during integration", False, {}),
    (
        "inline_max_duration",
        0.02,
        "s; a goal whose shape last steered within this runs on the executor thread (~0.8 ms "
        "sooner, not cancelable mid-call); 0 = always on the worker",
        False,
        float_range(0, 1),
    ),
    (
        "feedback_period",
        0.02,
        "s between feedback, and before the first (a shorter call sends none); 0 = every step",
        False,
        float_range(0, 10),
    ),
    ("publish_markers", True, "EE paths on frs/markers", False, {}),
    ("publish_record", True, "SteeringRecord per goal on frs/steering/record", False, {}),
]


@dataclass(frozen=True)
class GoalParameters:
    """The node parameters one goal is served with, read once when it arrives: they may change
    between goals, never during one."""

    device: str
    max_translation: float
    stamp_tolerance: float
    max_observation_age: float
    observation_wait: float
    commanded_rows: int
    command_rotation: bool
    max_num_steps: int
    max_samples: int
    max_normalized: float
    include_unsteered: bool
    round_trip: bool
    temperature: float
    publish_feedback: bool
    inline_max_duration: float
    feedback_period: float
    publish_markers: bool
    publish_record: bool

    @classmethod
    def read(cls, value: Callable[[str], Any]) -> GoalParameters:
        """Each field from ``value(name)`` (a node's parameter lookup), as its declared type."""
        cast = {"str": str, "float": float, "int": int, "bool": bool}
        return cls(**{f.name: cast[f.type](value(f.name)) for f in dataclasses.fields(cls)})

    def reference_settings(self, layout: Any) -> ReferenceSettings:
        """How a goal's coarse reference is built in ``layout`` (the adapter's ActionLayout)."""
        return ReferenceSettings(
            frame_id=layout.frame_id,
            action_space=layout.action_space,
            max_translation=self.max_translation,
            commanded_rows=self.commanded_rows,
            command_rotation=self.command_rotation,
        )

    def shape(self, request: SteerRequest) -> tuple:
        """What a goal's steering time depends on: its settings and the node's extra passes."""
        return (request.shape(), (self.include_unsteered, self.round_trip))


#: The node parameters naming learned networks, in :class:`LearnedPolicies` field order.
PARAMETERS_OF_LEARNED = ("noise_policy", "reference_policy", "residual_policy", "learned_reversal")


@dataclass(frozen=True)
class LearnedPolicies:
    """The learned networks the node's parameters name (None where empty): a noise policy
    (method noise_policy), a reference policy (method reference_policy), a residual policy
    that moves FRS's noise in reference_policy goals and a learned reversal (method
    learned_reversal, and reference_policy goals in place of FRS's reversal)."""

    noise: Any = None
    reference: Any = None
    residual: Any = None
    reversal: Any = None

    def loaded(self) -> list[str]:
        """The node parameters whose networks are loaded (for the configure log)."""
        nets = (self.noise, self.reference, self.residual, self.reversal)
        named = zip(PARAMETERS_OF_LEARNED, nets, strict=True)
        return [name for name, net in named if net is not None]


@dataclass(frozen=True)
class GoalInputs:
    """What goals are checked and prepared against: the bound policy and adapter, the node's
    sample buffers (``frs_steering.observation.InputBuffers``), its learned policies, its clock
    (ns) and its latest instruction, (text, encoded) or None."""

    policy: Any
    adapter: Any
    buffers: Any
    learned: LearnedPolicies
    now_ns: Callable[[], int]
    instruction: Callable[[], tuple[str, Any] | None]

    def check(self, goal: Any, params: GoalParameters) -> SteerRequest:
        """The goal's steering settings; GoalRejected names a bad one."""
        return check_goal(
            goal,
            max_num_steps=params.max_num_steps,
            max_samples=params.max_samples,
            noise_policy=self.learned.noise,
            reference_policy=self.learned.reference,
            learned_reversal=self.learned.reversal,
            device=params.device,
        )

    def proposed(
        self, goal: Any, request: SteerRequest, observation: Any
    ) -> tuple[SteerRequest, Any]:
        """(request, CoarseReference) of the reference policy's proposal for ``observation``:
        FRS toward it (its noise moved by the residual policy, if any), the policy's own
        sample where it defers."""
        try:
            proposal = self.learned.reference.propose(observation.policy_input)
        except ValueError as error:  # an input it cannot read: refuse the goal, move nothing
            raise ObservationError(f"the reference policy cannot propose: {error}") from None
        reference = proposal_to_msg(
            proposal,
            stamp=goal.observation_stamp,
            frame_id=self.adapter.layout.frame_id,
            instruction=observation.instruction,
        )
        method, params = method_and_params(
            "frs",
            defer=proposal.defer,
            noise_scale=goal.noise_scale,
            partial_time=goal.partial_time,
            num_samples=goal.num_samples,
        )
        if method == "frs" and self.learned.residual is not None:
            params["residual_policy"] = self.learned.residual
        elif method == "frs" and self.learned.reversal is not None:
            method, params = METHOD_LEARNED_REVERSAL, {"reversal": self.learned.reversal}
        return dataclasses.replace(request, method=method, params=params), reference

    def prepare(
        self,
        goal: Any,
        params: GoalParameters,
        request: SteerRequest,
        started: float,
        wait_s: float,
    ) -> Prepared:
        """The goal's observation (matched to its stamp, 0 = latest, waiting up to ``wait_s``;
        ObservationError if none fits) and checked reference."""
        joints, samples = self.buffers.match(
            stamp_to_ns(goal.observation_stamp),
            int(params.stamp_tolerance * 1e9),
            wait_s,
            now_ns=self.now_ns(),
            max_age_s=params.max_observation_age,
        )
        text, encoded = self.instruction() or ("", None)
        observation = self.adapter.observation(joints, samples, encoded, text)
        reference = goal.reference
        if request.method == METHOD_REFERENCE_POLICY:
            request, reference = self.proposed(goal, request, observation)
        settings = params.reference_settings(self.adapter.layout)
        built = self.adapter.layout.reference(self.policy.spec, settings, reference, observation)
        check_reference(self.policy.spec, built, params.max_normalized)
        return Prepared(request, observation, settings, built, started, reference)


class GoalRejected(Exception):
    """The goal cannot be served; ``str(err)`` is the reason sent back to the client."""


class GoalCanceled(Exception):
    """The client canceled the goal, or the node stopped serving, between integration steps."""


class GoalPreempted(Exception):
    """A newer goal arrived; this one stops between integration steps."""


class StepMonitor:
    """The :func:`steer` step callback of one goal: stops it between integration steps when it
    is canceled, preempted or the node stops serving, and sends throttled feedback.

    Feedback starts once the goal has run ``period``: a call shorter than that (the usual
    chunk) sends none, as each message costs the call ~0.3 ms of the GIL; a longer one then
    reports every ``period`` and at each phase's first and last step. ``period`` 0: every step.
    """

    def __init__(
        self,
        *,
        canceled: Callable[[], bool],
        current: Callable[[], bool],
        publish: Callable[[str, int, int], None] | None,
        period: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._canceled, self._current, self._publish = canceled, current, publish
        self._period, self._clock = period, clock
        self._quiet_until = clock() + period
        self._last_phase, self._last_time = "", -math.inf

    def check(self) -> None:
        """Raise GoalCanceled or GoalPreempted if the goal must stop now."""
        if self._canceled():
            raise GoalCanceled
        if not self._current():
            raise GoalPreempted

    def __call__(self, phase: str, step: int, total: int) -> None:
        self.check()
        if self._publish is None:
            return
        now = self._clock()
        if now < self._quiet_until:
            return
        boundary = phase != self._last_phase or step + 1 == total
        if boundary or now - self._last_time >= self._period:
            self._last_phase, self._last_time = phase, now
            self._publish(phase, step + 1, total)


@dataclass(frozen=True)
class Served:
    """How a steering worker ended a goal: the goal-state transition, the result message, and
    what to publish once the result is sent."""

    transition: str  # "succeed" | "abort" | "canceled"
    result: Any
    publish: Callable[[], None] | None = None


@dataclass(frozen=True)
class SteerRequest:
    """A goal's checked steering settings, in :func:`frs_steering.steer.steer`'s terms."""

    method: str
    params: dict
    num_steps: int | None
    solver: str
    generator: torch.Generator | None
    seed: int = -1

    def shape(self) -> tuple:
        """What the steering time depends on: method, steps, solver and the params' values
        (a network param by its identity)."""
        params = tuple(
            (name, value if isinstance(value, int | float | str | bool) else id(value))
            for name, value in sorted(self.params.items())
        )
        return (self.method, self.num_steps, self.solver, params)


class Prepared(NamedTuple):
    """A goal's checked settings and its inputs, ready to steer."""

    request: SteerRequest
    observation: Any  # frs_steering.adapters.base.StampedObservation
    settings: Any  # frs_steering.adapters.base.ReferenceSettings
    built: Any  # the layout's reference
    started: float  # perf_counter when preparing began
    reference: Any  # the CoarseReference steered toward: the goal's, or the reference policy's


class SteeringDurations:
    """The last steering time of the ``size`` most recently served goal shapes (a client
    varying float settings cannot grow it)."""

    def __init__(self, size: int = 64) -> None:
        self._last: dict[Hashable, float] = {}
        self._size = size
        self._lock = threading.Lock()  # recorded on the worker, read on the executor

    def record(self, shape: Hashable, seconds: float) -> None:
        with self._lock:
            self._last.pop(shape, None)  # re-inserted as the newest
            self._last[shape] = seconds
            while len(self._last) > self._size:
                del self._last[next(iter(self._last))]

    def at_most(self, shape: Hashable, seconds: float) -> bool:
        """Whether the last goal of ``shape`` steered within ``seconds`` (False if none did)."""
        with self._lock:
            last = self._last.get(shape)
        return last is not None and last <= seconds


def check_goal(
    goal: Any,
    *,
    max_num_steps: int,
    max_samples: int,
    noise_policy: Any | None,
    reference_policy: Any | None = None,
    learned_reversal: Any | None = None,
    device: str = "cpu",
) -> SteerRequest:
    """Method, parameters, steps, solver and seed of a goal; GoalRejected names a bad one.

    ``reference_policy`` stays the request's method: what runs (FRS, or the policy's own
    sample on a predicted deferral) is decided from the observation (``GoalInputs.proposed``).
    """
    try:
        check_time(goal.observation_stamp, "observation_stamp")
    except MessageError as error:
        raise GoalRejected(str(error)) from None
    method = goal.method or "frs"
    cloned = method == METHOD_REFERENCE_POLICY
    if cloned and reference_policy is None:
        raise GoalRejected(
            "method reference_policy needs a reference-policy checkpoint: set the "
            "reference_policy parameter (trained by frs_sim.studies.dsbc)"
        )
    available = [*available_methods(), METHOD_REFERENCE_POLICY]
    if method not in available:
        raise GoalRejected(f"unknown method {method!r}; available: {available}")
    if goal.num_steps > max_num_steps:
        raise GoalRejected(f"num_steps {goal.num_steps} exceeds max_num_steps {max_num_steps}")
    try:
        solver = as_solver(goal.solver or "euler")
        method, params = method_and_params(
            "frs" if cloned else method,
            defer=goal.reference.defer and not cloned,
            noise_scale=goal.noise_scale,
            partial_time=goal.partial_time,
            num_samples=goal.num_samples,
            max_samples=max_samples,
        )
    except ValueError as error:
        raise GoalRejected(str(error)) from None
    if method == METHOD_NOISE_POLICY:
        if noise_policy is None:
            raise GoalRejected(
                "method noise_policy needs a noise-policy checkpoint: set the noise_policy "
                "parameter (trained by frs_sim.studies.dsbc or frs_sim.studies.dsrl)"
            )
        params["noise_policy"] = noise_policy
    if method == METHOD_LEARNED_REVERSAL:
        if learned_reversal is None:
            raise GoalRejected(
                "method learned_reversal needs a learned-reversal checkpoint: set the "
                "learned_reversal parameter (trained by frs_sim.studies.dsbc)"
            )
        params["reversal"] = learned_reversal
    if cloned:
        method = METHOD_REFERENCE_POLICY
    # A negative seed draws one here, so the call is still random but can be replayed.
    seed = int(goal.seed) if goal.seed >= 0 else int.from_bytes(os.urandom(7), "little")
    generator = torch.Generator(device=device).manual_seed(seed)
    return SteerRequest(
        method=method,
        params=params,
        num_steps=goal.num_steps or None,
        solver=solver.value,
        generator=generator,
        seed=seed,
    )


def load_learned_policies(
    param: Callable[[str], Any], policy: Any, device: str = "cpu"
) -> LearnedPolicies:
    """The networks named by the node parameters :data:`PARAMETERS_OF_LEARNED` (None where
    empty), each checked against the flow policy and its role: a residual policy without a
    reference policy would never run, and it moves FRS's own reversal, not a learned one."""
    from frs_steering.learning.noise_policy import load_checked_noise_policy
    from frs_steering.learning.observation_input import REFERENCE_ROW, reads_reference
    from frs_steering.learning.reference_policy import load_checked_reference_policy

    noise, reference, residual, reversal = (str(param(name)) for name in PARAMETERS_OF_LEARNED)
    if residual and not reference:
        raise ValueError("residual_policy moves FRS toward a reference policy: set one")
    if residual and reversal:
        raise ValueError("residual_policy moves FRS's own reversal: leave learned_reversal empty")

    def noise_net(path: str, as_reversal: bool) -> Any:
        net = load_checked_noise_policy(path, policy, device)
        reads = net.config.observation_dims
        if reads_reference(reads) and not as_reversal:
            raise ValueError(f"{path} reads a reference: set it as learned_reversal")
        if as_reversal and REFERENCE_ROW not in reads:
            raise ValueError(f"learned_reversal {path} reads no reference: not a learned reversal")
        return net

    return LearnedPolicies(
        noise=noise_net(noise, False) if noise else None,
        reference=load_checked_reference_policy(reference, policy, device) if reference else None,
        residual=noise_net(residual, False) if residual else None,
        reversal=noise_net(reversal, True) if reversal else None,
    )


def _largest(chunk: torch.Tensor) -> float:
    """Largest |value| of a chunk; inf when any value is NaN or Inf."""
    return float(chunk.abs().nan_to_num(nan=math.inf).max())


def check_reference(spec: Any, built: Any, limit: float) -> None:
    """GoalRejected unless the reference is finite and within ``limit`` in policy units.

    Training data lies within about [-1, 1] after normalization and noise within a few units:
    a reference far outside (e.g. 1e4 m) has no in-distribution answer and would come back as
    itself (or NaN), so it is refused here with its size.
    """
    largest = _largest(built.chunk if built.normalized else spec.to_policy(built.chunk))
    if not math.isfinite(largest):
        raise GoalRejected("reference contains NaN or Inf")
    if largest > limit:
        raise GoalRejected(
            f"reference out of the policy's range: |value| {largest:.3g} in normalized units "
            f"exceeds max_normalized {limit:g}"
        )


def bound_output(
    result: SteerResult, gripper_index: int | None, limit: float = math.inf
) -> SteerResult:
    """The result with its gripper columns clipped into [0, 1]; ObservationError if a refined
    or unsteered chunk is non-finite (in either space) or beyond ``limit`` in the policy's
    normalized units.

    A policy may overshoot its gripper range (e.g. 1.17); the arm controller would have to
    reject or clip it, so it is bounded where it is produced.
    """
    pairs = [(result.chunk, result.chunk_real), (result.base_chunk, result.base_chunk_real)]
    for normalized, real in pairs:
        if normalized is None:
            continue
        largest = _largest(normalized)
        if not (math.isfinite(largest) and math.isfinite(_largest(real))):
            raise ObservationError("the policy produced a non-finite chunk")
        if largest > limit:
            raise ObservationError(
                f"the policy's chunk is out of range (|value| {largest:.3g} > max_normalized "
                f"{limit:g} in normalized units)"
            )

    return dataclasses.replace(
        result,
        chunk_real=clip_gripper(result.chunk_real, gripper_index),
        base_chunk_real=clip_gripper(result.base_chunk_real, gripper_index),
    )


def steer_prepared(
    policy: Any,
    prepared: Prepared,
    monitor: StepMonitor,
    *,
    include_unsteered: bool,
    round_trip: bool,
    gripper_index: int | None,
    limit: float,
    temperature: float,
) -> tuple[SteerResult, float]:
    """Steer a prepared goal, stoppable between integration steps by ``monitor``, and bound
    its output (:func:`bound_output`). Also returns the seconds the steering call took: what
    decides whether the goal's shape steers inline next time."""
    monitor.check()  # canceled or preempted while it waited: no work
    request, observation, built = prepared.request, prepared.observation, prepared.built
    started = time.perf_counter()
    result = steer(
        policy,
        built.chunk,
        observation=observation.policy_input,
        method=request.method,
        params=request.params,
        mask=built.mask,
        reference_normalized=built.normalized,
        generator=request.generator,
        num_steps=request.num_steps,
        solver=request.solver,
        include_base_sample=include_unsteered,
        round_trip=round_trip,
        step_callback=monitor,
        temperature=temperature,
    )
    seconds = time.perf_counter() - started
    return bound_output(result, gripper_index, limit), seconds


def clip_gripper(chunk: torch.Tensor | None, gripper_index: int | None) -> torch.Tensor | None:
    """A copy of a real-unit chunk with its gripper column clipped into [0, 1], as the node
    outputs it (unchanged without a gripper column)."""
    if chunk is None or gripper_index is None or gripper_index >= chunk.shape[-1]:
        return chunk
    chunk = chunk.clone()
    chunk[..., gripper_index] = chunk[..., gripper_index].clamp(0.0, 1.0)
    return chunk


def weights_sha256(checkpoint: str) -> str:
    """The weights' SHA-256 recorded in a checkpoint's config.json ("" if absent)."""
    try:
        document = json.loads((Path(checkpoint) / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    return str(document.get("weights_sha256", "")) if isinstance(document, dict) else ""
