"""Types every reasoner backend shares: observation in, coarse proposal out.

A reasoner (scripted, human, VLM) looks at an observation and proposes a coarse Cartesian
direction for the next action chunk, or defers (the policy acts on its own). Directions are
expressed in the robot base frame (``fr3_link0``, REP-103: x forward, y left, z up). The ROS
node translates these types to and from ``frs_msgs/CoarseReference``; nothing here imports ROS.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import numpy as np

BASE_FRAME = "fr3_link0"

MAGNITUDE_MORE = 1.0
MAGNITUDE_LESS = 0.5
AMOUNT_MAGNITUDES: Mapping[str, float] = MappingProxyType(
    {"more": MAGNITUDE_MORE, "less": MAGNITUDE_LESS}
)

_UNIT_TOLERANCE = 1e-6


class Source(enum.IntEnum):
    """Who proposed the direction (values match CoarseReference.SOURCE_*)."""

    SCRIPTED = 0
    HUMAN = 1
    VLM = 2
    LEARNED = 3  # a reference policy cloned from recorded proposals


class Gripper(enum.IntEnum):
    """What the gripper should do during the chunk (values match CoarseReference.GRIPPER_*)."""

    KEEP = 0
    OPEN = 1
    CLOSE = 2

    @property
    def word(self) -> str:
        """The lowercase word used in text commands and the VLM schema."""
        return self.name.lower()

    @classmethod
    def from_word(cls, word: str) -> Gripper:
        """Parse ``keep``/``open``/``close``; ValueError names the bad word."""
        try:
            return cls[word.strip().upper()]
        except KeyError:
            allowed = ", ".join(g.word for g in cls)
            raise ValueError(f"unknown gripper action {word!r} (allowed: {allowed})") from None


# Direction words -> axis in the base frame. "left" is the robot's own left (+y), not the left
# of some camera image; a rig whose operators think in camera terms passes its own mapping.
DEFAULT_DIRECTION_AXES: Mapping[str, tuple[float, float, float]] = MappingProxyType(
    {
        "forward": (1.0, 0.0, 0.0),
        "back": (-1.0, 0.0, 0.0),
        "left": (0.0, 1.0, 0.0),
        "right": (0.0, -1.0, 0.0),
        "up": (0.0, 0.0, 1.0),
        "down": (0.0, 0.0, -1.0),
    }
)

DirectionAxes = Mapping[str, tuple[float, float, float]]

_WORD_PATTERN = re.compile(r"^[a-z][a-z_]*$")


def _as_vector3(value: object, name: str) -> np.ndarray:
    """A finite float64 (3,) copy of ``value`` that cannot be modified later."""
    array = np.array(value, dtype=np.float64).reshape(-1)
    if array.shape != (3,):
        raise ValueError(f"{name} must have 3 elements, got shape {np.shape(value)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    array.setflags(write=False)
    return array


def make_direction_axes(mapping: Mapping[str, Iterable[float]]) -> DirectionAxes:
    """Validate a word -> base-frame unit axis mapping and freeze it.

    Words are lowercase identifiers; vectors are nonzero and get unit-normalised so a word
    always means one unit of "that way".
    """
    if not mapping:
        raise ValueError("direction axes mapping must not be empty")
    frozen: dict[str, tuple[float, float, float]] = {}
    for word, vector in mapping.items():
        if not isinstance(word, str) or not _WORD_PATTERN.match(word):
            raise ValueError(f"direction word {word!r} must be a lowercase identifier")
        array = _as_vector3(vector, f"axis of {word!r}")
        norm = float(np.linalg.norm(array))
        if norm == 0.0:
            raise ValueError(f"axis of {word!r} must be nonzero")
        unit = array / norm
        frozen[word] = (float(unit[0]), float(unit[1]), float(unit[2]))
    return MappingProxyType(frozen)


def unit_or_zero(vector: Iterable[float]) -> np.ndarray:
    """Unit vector along ``vector``; the zero vector stays zero."""
    array = _as_vector3(vector, "vector")
    norm = float(np.linalg.norm(array))
    result = array / norm if norm > 0.0 else np.zeros(3)
    result.setflags(write=False)
    return result


def axis_signs(
    vector: Iterable[float], dead_band: float = 0.0, relative_threshold: float = 0.0
) -> np.ndarray:
    """Per-axis sign in {-1, 0, +1} of a free 3-vector.

    An axis counts as 0 when its magnitude is within ``dead_band`` (absolute, e.g. metres) or
    below ``relative_threshold`` times the largest component (so a mostly-forward offset does
    not pick up a diagonal from a small sideways error).
    """
    if dead_band < 0.0 or not 0.0 <= relative_threshold <= 1.0:
        raise ValueError("dead_band must be >= 0 and relative_threshold in [0, 1]")
    array = _as_vector3(vector, "vector")
    magnitudes = np.abs(array)
    keep = magnitudes > dead_band
    if relative_threshold > 0.0:
        keep &= magnitudes >= relative_threshold * magnitudes.max()
    return np.where(keep, np.sign(array), 0.0)


def quantize_direction(
    vector: Iterable[float], dead_band: float = 0.0, relative_threshold: float = 0.0
) -> np.ndarray:
    """Coarse direction of a free 3-vector: per-axis signs, unit-normalised (or zero)."""
    return unit_or_zero(axis_signs(vector, dead_band, relative_threshold))


def direction_from_words(words: Iterable[str], axes: DirectionAxes) -> np.ndarray:
    """Unit direction for a combination of direction words (e.g. ``["left", "down"]``).

    ValueError for an unknown word, a repeated word, or two words pulling against each other
    (e.g. ``left`` with ``right``), since such a combination has no clear intent.
    """
    word_list = list(words)
    unknown = [w for w in word_list if w not in axes]
    if unknown:
        raise ValueError(f"unknown direction word {unknown[0]!r} (allowed: {', '.join(axes)})")
    if len(set(word_list)) != len(word_list):
        raise ValueError(f"repeated direction word in {word_list}")
    vectors = [np.asarray(axes[w]) for w in word_list]
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            if float(vectors[i] @ vectors[j]) < -_UNIT_TOLERANCE:
                raise ValueError(
                    f"direction words {word_list[i]!r} and {word_list[j]!r} contradict each other"
                )
    return unit_or_zero(np.sum(vectors, axis=0) if vectors else np.zeros(3))


@dataclass(frozen=True, eq=False)
class Observation:
    """What a reasoner looks at for one chunk.

    ``image`` is an HxWx3 uint8 RGB array (or None without a camera); ``ee_position`` is the
    end-effector position in the base frame in metres; ``objects`` maps object names to their
    ground-truth positions in the base frame (simulator only; empty on a real rig);
    ``gripper_opening`` is in [0, 1], 1 = fully open (None without a gripper reading).
    """

    instruction: str
    ee_position: np.ndarray
    image: np.ndarray | None = None
    objects: Mapping[str, np.ndarray] = field(default_factory=dict)
    gripper_opening: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ee_position", _as_vector3(self.ee_position, "ee_position"))
        if self.gripper_opening is not None:
            opening = float(self.gripper_opening)
            if not 0.0 <= opening <= 1.0:  # NaN fails too
                raise ValueError(f"gripper_opening must be in [0, 1], got {self.gripper_opening}")
            object.__setattr__(self, "gripper_opening", opening)
        if self.image is not None:
            image = np.asarray(self.image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"image must be an HxWx3 uint8 array, got {image.dtype} {image.shape}"
                )
            if image.shape[0] == 0 or image.shape[1] == 0:
                raise ValueError(f"image must not be empty, got shape {image.shape}")
            object.__setattr__(self, "image", image)
        objects = {
            str(name): _as_vector3(pos, f"object {name!r}") for name, pos in self.objects.items()
        }
        object.__setattr__(self, "objects", MappingProxyType(objects))


@dataclass(frozen=True, eq=False)
class CoarseProposal:
    """A reasoner's coarse action for the next chunk.

    ``direction`` is a unit vector (or zero: hold position, e.g. gripper-only) in the base
    frame; ``magnitude`` is 1.0 for "more" and 0.5 for "less". A deferring proposal always
    has a zero direction so a consumer cannot steer by accident; ``reason`` says why it
    deferred, or carries the reasoner's rationale. ``target`` (base frame, metres) and
    ``image_point`` (u right, v down, pixels of the observation image) are optional context.
    ``latency_s`` is how long the reasoner took, when it measured it.
    """

    source: Source
    defer: bool = False
    direction: np.ndarray = field(default_factory=lambda: np.zeros(3))
    magnitude: float = MAGNITUDE_MORE
    gripper: Gripper = Gripper.KEEP
    target: np.ndarray | None = None
    image_point: tuple[float, float] | None = None
    reason: str = ""
    latency_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", Source(self.source))
        object.__setattr__(self, "gripper", Gripper(self.gripper))
        if not isinstance(self.defer, bool | np.bool_):
            raise ValueError(f"defer must be a bool, got {type(self.defer).__name__}")
        object.__setattr__(self, "defer", bool(self.defer))
        direction = _as_vector3(self.direction, "direction")
        norm = float(np.linalg.norm(direction))
        if norm != 0.0 and abs(norm - 1.0) > _UNIT_TOLERANCE:
            raise ValueError(f"direction must be a unit vector or zero, got norm {norm:.6g}")
        if self.defer and norm != 0.0:
            raise ValueError("a deferring proposal must have a zero direction")
        object.__setattr__(self, "direction", direction)
        magnitude = float(self.magnitude)
        if not 0.0 <= magnitude <= 1.0:
            raise ValueError(f"magnitude must be in [0, 1], got {magnitude}")
        object.__setattr__(self, "magnitude", magnitude)
        if self.target is not None:
            object.__setattr__(self, "target", _as_vector3(self.target, "target"))
        if self.image_point is not None:
            u, v = (float(c) for c in self.image_point)
            if not (math.isfinite(u) and math.isfinite(v)):
                raise ValueError(f"image_point must be finite, got {self.image_point}")
            object.__setattr__(self, "image_point", (u, v))
        object.__setattr__(self, "reason", str(self.reason))


def defer(reason: str, source: Source, latency_s: float | None = None) -> CoarseProposal:
    """A proposal that hands the chunk back to the policy, saying why."""
    return CoarseProposal(source=source, defer=True, reason=reason, latency_s=latency_s)


@dataclass(frozen=True)
class TargetApproach:
    """How a 3D target becomes a coarse direction from the end-effector.

    Axes whose offset is within ``dead_band_m`` are not commanded; inside ``slow_radius_m`` the
    step is "less"; inside ``capture_radius_m`` the target counts as reached and the reasoner
    defers (fine positioning is the policy's job).
    """

    dead_band_m: float = 0.02
    slow_radius_m: float = 0.10
    capture_radius_m: float = 0.03

    def __post_init__(self) -> None:
        if min(self.dead_band_m, self.slow_radius_m, self.capture_radius_m) < 0.0:
            raise ValueError("dead band and radii must be >= 0")


def steer_toward(
    ee_position: Iterable[float],
    target: Iterable[float],
    source: Source,
    approach: TargetApproach = TargetApproach(),
) -> CoarseProposal:
    """Coarse proposal that moves the end-effector toward ``target`` (both in the base frame)."""
    ee = _as_vector3(ee_position, "ee_position")
    goal = _as_vector3(target, "target")
    offset = goal - ee
    distance = float(np.linalg.norm(offset))
    if distance <= approach.capture_radius_m:
        return CoarseProposal(
            source=source,
            defer=True,
            target=goal,
            reason=(
                f"target reached: {distance:.3f} m away, within the capture radius "
                f"{approach.capture_radius_m:.3f} m"
            ),
        )
    direction = quantize_direction(offset, dead_band=approach.dead_band_m)
    if not direction.any():
        return CoarseProposal(
            source=source,
            defer=True,
            target=goal,
            reason=f"target offset within the {approach.dead_band_m:.3f} m dead band on every axis",
        )
    slow = distance < approach.slow_radius_m
    return CoarseProposal(
        source=source,
        direction=direction,
        magnitude=MAGNITUDE_LESS if slow else MAGNITUDE_MORE,
        target=goal,
        reason=f"toward target {distance:.3f} m away",
    )


@runtime_checkable
class Reasoner(Protocol):
    """Anything that turns an observation into a coarse proposal (or a deferral)."""

    def propose(self, observation: Observation) -> CoarseProposal:
        """Coarse action for the next chunk; backends defer rather than raise on bad input."""
        ...


class NoReasoner:
    """No reasoner in the loop: every chunk defers, so the steering method acts alone (method
    ``noise_policy`` runs a DSBC / DSRL noise policy; ``base`` samples the flow policy)."""

    def propose(self, observation: Observation) -> CoarseProposal:
        return CoarseProposal(source=Source.SCRIPTED, defer=True, reason="no reasoner")

    def __repr__(self) -> str:
        return "NoReasoner()"
