"""Human reasoner: coarse directions from typed commands or from a target clicked in rviz.

Commands are short phrases such as ``"left down"``, ``"forward less"``, ``"close"`` or
``"stop"``; a clicked point (already in the base frame) becomes a direction from the current
end-effector position. The latest input wins and expires after ``max_age_s``, so an operator
who walks away hands control back to the policy instead of steering forever.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from frs_steering.reasoning import (
    AMOUNT_MAGNITUDES,
    DEFAULT_DIRECTION_AXES,
    MAGNITUDE_MORE,
    CoarseProposal,
    DirectionAxes,
    Gripper,
    Observation,
    Source,
    TargetApproach,
    defer,
    direction_from_words,
    make_direction_axes,
    steer_toward,
)

DEFER_WORDS = frozenset({"defer", "stop"})
GRIPPER_WORDS: Mapping[str, Gripper] = {"open": Gripper.OPEN, "close": Gripper.CLOSE}
DIRECTION_SYNONYMS: Mapping[str, str] = {
    "backward": "back",
    "backwards": "back",
    "forwards": "forward",
}
_FILLER_WORDS = frozenset({"and"})
_SEPARATORS = re.compile(r"[\s,+]+")


def parse_command(text: str, axes: DirectionAxes = DEFAULT_DIRECTION_AXES) -> CoarseProposal:
    """Proposal for a typed command; ValueError names the first word it cannot use.

    Grammar (order-free, case-insensitive, separated by spaces, commas or ``+``): any
    non-contradicting direction words from ``axes``, at most one of ``more``/``less``, at
    most one of ``open``/``close``, or ``defer``/``stop`` alone (stop steering: the policy
    acts on its own; this never halts the robot).
    """
    words = [w for w in _SEPARATORS.split(text.strip().lower()) if w and w not in _FILLER_WORDS]
    if not words:
        raise ValueError("empty command")
    direction_words: list[str] = []
    amounts: list[str] = []
    grippers: list[str] = []
    defers: list[str] = []
    for word in words:
        canonical = DIRECTION_SYNONYMS.get(word, word)
        if canonical in axes:
            direction_words.append(canonical)
        elif word in AMOUNT_MAGNITUDES:
            amounts.append(word)
        elif word in GRIPPER_WORDS:
            grippers.append(word)
        elif word in DEFER_WORDS:
            defers.append(word)
        else:
            known = [*axes, *AMOUNT_MAGNITUDES, *GRIPPER_WORDS, *sorted(DEFER_WORDS)]
            raise ValueError(
                f"unknown word {word!r} in command {text!r} (known words: {', '.join(known)})"
            )
    if defers:
        if len(words) != len(defers):
            raise ValueError(f"{defers[0]!r} must stand alone, got command {text!r}")
        return defer(f"human said {defers[0]!r}", Source.HUMAN)
    if len(amounts) > 1:
        raise ValueError(f"more than one amount word in command {text!r}")
    if len(grippers) > 1:
        raise ValueError(f"more than one gripper word in command {text!r}")
    if amounts and not direction_words:
        raise ValueError(f"{amounts[0]!r} needs a direction word, got command {text!r}")
    direction = direction_from_words(direction_words, axes)
    return CoarseProposal(
        source=Source.HUMAN,
        direction=direction,
        magnitude=AMOUNT_MAGNITUDES[amounts[0]] if amounts else MAGNITUDE_MORE,
        gripper=GRIPPER_WORDS[grippers[0]] if grippers else Gripper.KEEP,
        reason=f"human command {text.strip()!r}",
    )


@dataclass(frozen=True)
class HumanConfig:
    """Human reasoner settings: input lifetime, target approach, and word -> axis mapping."""

    max_age_s: float = 2.0
    approach: TargetApproach = field(default_factory=TargetApproach)
    direction_axes: DirectionAxes = field(default_factory=lambda: DEFAULT_DIRECTION_AXES)

    def __post_init__(self) -> None:
        if not self.max_age_s > 0.0:
            raise ValueError(
                f"max_age_s must be > 0 (math.inf: never expire), got {self.max_age_s}"
            )
        object.__setattr__(self, "direction_axes", make_direction_axes(self.direction_axes))


class HumanReasoner:
    """Proposes from the operator's latest command or clicked target until it goes stale.

    Inputs arrive from subscription callbacks while ``propose`` runs on another thread, so
    the latest input is guarded by a lock. ``clock`` returns seconds (monotonic by default;
    a node may pass its ROS clock so simulated time works).
    """

    def __init__(
        self, config: HumanConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or HumanConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._command: CoarseProposal | None = None
        self._target: np.ndarray | None = None
        self._received_at = -math.inf
        self._label = ""

    def command(self, text: str) -> CoarseProposal:
        """Parse and adopt a typed command (replacing any target); bad text keeps the old one."""
        proposal = parse_command(text, self.config.direction_axes)
        with self._lock:
            self._command, self._target = proposal, None
            self._received_at = self._clock()
            self._label = f"command {text.strip()!r}"
        return proposal

    def click(self, target: Iterable[float]) -> None:
        """Adopt a target point in the base frame (replacing any command)."""
        point = np.asarray(list(target), dtype=np.float64)
        if point.shape != (3,) or not np.all(np.isfinite(point)):
            raise ValueError(f"target must be 3 finite numbers, got {point.tolist()}")
        with self._lock:
            self._command, self._target = None, point
            self._received_at = self._clock()
            self._label = f"target {np.round(point, 3).tolist()}"

    def clear(self) -> None:
        """Forget the latest input; proposals defer until the next one."""
        with self._lock:
            self._command, self._target, self._label = None, None, ""
            self._received_at = -math.inf

    def propose(self, observation: Observation) -> CoarseProposal:
        """The latest input as a proposal, or a deferral when there is none or it is stale."""
        with self._lock:
            command, target, label = self._command, self._target, self._label
            age = self._clock() - self._received_at
        if command is None and target is None:
            return defer("no human input yet", Source.HUMAN)
        if age > self.config.max_age_s:
            return defer(
                f"human {label} is stale: {age:.1f} s old, expires after "
                f"{self.config.max_age_s:.1f} s",
                Source.HUMAN,
            )
        if command is not None:
            return command
        return steer_toward(observation.ee_position, target, Source.HUMAN, self.config.approach)
