"""Scripted reasoner for the simulated benchmark: coarse directions like a VLM would give them.

From ground-truth object poses it picks the current sub-goal of the task (the same phases the
scripted expert goes through) and emits, per chunk, only a *coarse* Cartesian direction toward it:
per-axis signs in {-1, 0, +1} unit-normalised, magnitude "more" (1.0) or "less" (0.5), zero
rotation, gripper kept (left to the policy). Where precision is needed (the final centimetres
before a grasp, a release or a push contact) it defers, so the policy's own local skill finishes.

Phases per verb (``EE`` = end-effector site, heights from :mod:`frs_sim.experts`):

* ``lift`` / ``place`` before the grasp: above the cube (hover height) -> down to the grasp point
  -> DEFER within ``defer_radius`` of the grasp point (the policy aligns and closes);
  ``lift`` after the grasp: straight up;
  ``place`` after the grasp: above the mat (carry height) -> down to the release point -> DEFER
  within ``defer_radius`` of it (the policy lowers and lets go).
* ``push``: above the point behind the cube (on the cube -> mat line) -> down to pushing height ->
  DEFER within ``defer_radius`` of that contact point -> once behind the cube at pushing height,
  "through": toward where the EE is when the cube sits on the mat centre.

Coarseness knobs (:class:`ReasonerConfig`): per-axis quantisation (with a dead band and a
relative threshold), bounded angular noise (a random rotation of at most
``angular_noise_deg``), a rate of wrong (reversed) directions, the "less" radius. All randomness
comes from one seeded ``numpy`` generator.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from frs_sim.env import GRASP_HEIGHT, MAT_SUCCESS_HALF
from frs_sim.experts import (
    CARRY_HEIGHT,
    HOVER_HEIGHT,
    LIFT_HEIGHT,
    PLACE_HEIGHT,
    PUSH_CONTACT,
    PUSH_HEIGHT,
    PUSH_STANDOFF,
)
from frs_sim.scene import CUBE_HALF_SIZE, OBJECT_NAMES, TARGET_NAMES
from frs_sim.tasks import TaskSpec
from frs_steering.reasoning import (
    MAGNITUDE_LESS,
    MAGNITUDE_MORE,
    CoarseProposal,
    Gripper,
    Observation,
    Source,
    defer,
    quantize_direction,
    unit_or_zero,
)

CUBE_SUFFIX = "_cube"
MAT_SUFFIX = "_mat"
_PUSH_WORDS = ("push", "slide", "nudge", "shove", "without lifting")
#: "A little": the scripted reasoner's last centimetres (``fine_radius``; not a VLM amount).
MAGNITUDE_LITTLE = 0.25
#: Finger opening (0 closed .. 1 open) from which ``command_grasp`` approaches a cube: below it
#: the gripper is reopened first, so a missed grasp is retried.
GRIPPER_OPEN_ENOUGH = 0.9
#: The precision points where the reasoner can hand over to the policy.
DEFER_POINTS = ("grasp", "release", "push")


@dataclass(frozen=True)
class ReasonerConfig:
    """Knobs of :class:`ScriptedReasoner` (metres, degrees)."""

    defer_radius: float = 0.05  # defer within this distance of a precision point
    slow_radius: float = 0.10  # "less" within this distance of the sub-goal, else "more"
    fine_radius: float = 0.0  # "a little" within this distance of the sub-goal (0: never)
    align_radius: float = 0.03  # horizontal error under which the reasoner goes down, not across
    dead_band: float = 0.01  # axes with a smaller offset are not commanded
    relative_threshold: float = 0.4  # ... nor axes below this share of the largest offset
    quantize: bool = True  # per-axis signs (False: the exact unit direction)
    angular_noise_deg: float = 0.0  # rotate the direction by a random angle up to this
    wrong_direction_rate: float = 0.0  # probability of reversing the direction
    # At the release point, say "open the gripper" (zero direction) instead of deferring: where
    # the cube goes down is the task's global choice, so the reasoner makes it. On by default,
    # with ``defer_at`` empty and ``command_grasp``: the shipped generalist hides the pairing
    # (each cube has a habitual mat), and a policy handed a release, a grasp or a push contact
    # finishes the habitual task (docs/benchmarks.md).
    command_release: bool = True
    # Precision points where the policy finishes (within ``defer_radius``); at the others the
    # reasoner steers until the offset falls inside the dead band. A hidden-pairing policy, for
    # instance, would take the cube to its habitual mat if handed the push contact, whose side
    # of the cube is the task's global choice. The first generalist's reasoner handed over all
    # of ``DEFER_POINTS`` (``--defer-at grasp,release,push --no-command-release
    # --no-command-grasp``).
    defer_at: tuple[str, ...] = ()
    # Say "open the gripper" as soon as the held cube is within this horizontal distance of the
    # mat centre, at any height (0: off): a policy that never lowers a cube over this mat is not
    # asked to.
    drop_radius: float = 0.0
    # Steer to the grasp point and say "close the gripper" within ``close_radius`` of it, instead
    # of handing the grasp over (``defer_at``'s grasp is then ignored). A missed grasp reopens the
    # gripper and approaches again.
    command_grasp: bool = True
    close_radius: float = 0.02
    # Also say, with every motion, the gripper state of the phase: open on the way to a grasp,
    # closed while carrying and for the whole push (the expert pushes with closed fingers), as a
    # VLM would ("with the gripper closed, push it left"). Off: the gripper is left to the
    # policy except at the commanded grasp / release.
    state_gripper: bool = False
    # Where the reasoner thinks each cube and mat is: every episode it perceives each one this
    # far (metres) off its true centre, horizontally, in a random direction, as a VLM pointing
    # at objects in an image is off by a few centimetres. It aims every motion at the perceived
    # positions; what it sees as a relation (a cube held in the gripper, a cube resting on a
    # mat) it judges right. Re-planning cannot correct this error; a policy's local skill can.
    aim_error: float = 0.0

    def hands_over(self, point: str) -> bool:
        """Whether the reasoner defers to the policy near precision ``point``: the points of
        ``defer_at``, the release also under ``command_release`` (which then says "open" there),
        never the grasp under ``command_grasp``."""
        if point == "grasp" and self.command_grasp:
            return False
        return point in self.defer_at or (point == "release" and self.command_release)

    def __post_init__(self) -> None:
        unknown = set(self.defer_at) - set(DEFER_POINTS)
        if unknown:
            raise ValueError(f"defer_at: unknown points {sorted(unknown)} (known: {DEFER_POINTS})")
        for name in (
            "defer_radius",
            "slow_radius",
            "fine_radius",
            "align_radius",
            "dead_band",
            "drop_radius",
            "close_radius",
            "aim_error",
        ):
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must be >= 0")
        if not 0.0 <= self.relative_threshold <= 1.0:
            raise ValueError("relative_threshold must be in [0, 1]")
        if not 0.0 <= self.angular_noise_deg <= 180.0:
            raise ValueError("angular_noise_deg must be in [0, 180]")
        if not 0.0 <= self.wrong_direction_rate <= 1.0:
            raise ValueError("wrong_direction_rate must be in [0, 1]")


@dataclass(frozen=True)
class SubGoal:
    """Where the reasoner wants the EE next and whether it hands over to the policy there."""

    phase: str
    point: np.ndarray  # (3,) base frame, metres
    defer: bool = False
    slow: bool = False  # force "less" (contact phases)
    reason: str = ""
    gripper: Gripper = Gripper.KEEP  # a gripper command: said with no motion
    hold: Gripper = Gripper.KEEP  # the phase's gripper state, said with the motion (state_gripper)


def task_from_instruction(instruction: str) -> TaskSpec:
    """Parse verb, cube and mat colour from an instruction (any template of the task family)."""
    text = instruction.lower()
    words = re.findall(r"[a-z]+", text)
    cubes = [w for w in words if w in OBJECT_NAMES]
    mats = [w for w in words if w in TARGET_NAMES]
    if not cubes:
        raise ValueError(f"no cube colour {OBJECT_NAMES} in instruction {instruction!r}")
    if not mats:
        return TaskSpec("lift", cubes[0], None, (0,))
    verb = "push" if any(w in text for w in _PUSH_WORDS) else "place"
    return TaskSpec(verb, cubes[0], mats[0], (0,))


def observation_from_env(env_obs: Mapping[str, Any]) -> Observation:
    """The reasoner-facing :class:`Observation` of an environment observation dict
    (objects named ``<colour>_cube`` and ``<colour>_mat``)."""
    objects = {f"{n}{CUBE_SUFFIX}": env_obs["object_pos"][i] for i, n in enumerate(OBJECT_NAMES)}
    objects |= {f"{n}{MAT_SUFFIX}": env_obs["target_pos"][i] for i, n in enumerate(TARGET_NAMES)}
    return Observation(
        instruction=str(env_obs["instruction"]),
        ee_position=env_obs["ee_pos"],
        image=env_obs.get("image"),
        objects=objects,
        gripper_opening=float(np.asarray(env_obs["gripper"]).reshape(-1)[0]),
    )


def _holding(ee: np.ndarray, cube: np.ndarray, opening: float | None) -> bool:
    """Cube between the fingers (and, without a gripper reading, raised off the table)."""
    rel = cube - ee
    between = float(np.linalg.norm(rel[:2])) < 0.025 and -0.06 < rel[2] < -0.005
    if opening is None:
        return between and cube[2] > CUBE_HALF_SIZE + 0.01
    return between and opening < 0.6


def _on_mat(cube: np.ndarray, mat: np.ndarray) -> bool:
    return bool(np.all(np.abs(cube[:2] - mat[:2]) <= MAT_SUCCESS_HALF))


def _push_done(cube: np.ndarray, mat: np.ndarray) -> bool:
    """The pushed cube sits on the mat centre (what the reasoner stops pushing at)."""
    dist = float(np.linalg.norm(mat[:2] - cube[:2]))
    return dist < 0.012 or (_on_mat(cube, mat) and cube[2] < CUBE_HALF_SIZE + 0.01 and dist < 0.02)


def _rotate_random(direction: np.ndarray, max_angle: float, rng: np.random.Generator):
    """Rotate a unit vector by an angle uniform in [0, max_angle] about a random perpendicular."""
    helper = rng.normal(size=3)
    axis = np.cross(direction, helper)
    norm = float(np.linalg.norm(axis))
    if norm < 1e-9:
        return direction
    axis /= norm
    angle = rng.uniform(0.0, max_angle)
    rotated = (
        direction * math.cos(angle)
        + np.cross(axis, direction) * math.sin(angle)
        + axis * float(axis @ direction) * (1.0 - math.cos(angle))
    )
    return unit_or_zero(rotated)


class ScriptedReasoner:
    """Ground-truth reasoner with VLM-like coarseness (implements ``reasoning.Reasoner``)."""

    def __init__(self, config: ReasonerConfig | None = None, seed: int | None = 0) -> None:
        self.config = config or ReasonerConfig()
        self.reset(seed)

    def reset(self, seed: int | None) -> None:
        """Reseed the noise generator and draw the episode's perception errors (call at every
        episode start for repeatable runs)."""
        self.rng = np.random.default_rng(seed)
        self.aim_offsets = self._draw_aim_offsets(seed)

    def _draw_aim_offsets(self, seed: int | None) -> dict[str, np.ndarray]:
        """Per object name (``<colour>_cube``, ``<colour>_mat``): the (3,) offset between where
        the reasoner perceives it and where it is; all zero without ``aim_error``. Drawn from
        a generator of their own, so the other knobs' draws do not change with it."""
        names = [f"{n}{CUBE_SUFFIX}" for n in OBJECT_NAMES]
        names += [f"{n}{MAT_SUFFIX}" for n in TARGET_NAMES]
        if self.config.aim_error == 0.0:
            return {name: np.zeros(3) for name in names}
        rng = np.random.default_rng(None if seed is None else [seed, 1])
        angles = rng.uniform(0.0, 2.0 * math.pi, size=len(names))
        return {
            name: self.config.aim_error * np.array([math.cos(a), math.sin(a), 0.0])
            for name, a in zip(names, angles, strict=True)
        }

    # ------------------------------------------------------------------ entry points
    def propose(self, observation: Observation) -> CoarseProposal:
        """Reasoner protocol: task from the instruction, poses from ``observation.objects``,
        the gripper opening when the observation has one."""
        try:
            task = task_from_instruction(observation.instruction)
            cube = observation.objects[f"{task.obj}{CUBE_SUFFIX}"]
            mat = None if task.target is None else observation.objects[f"{task.target}{MAT_SUFFIX}"]
        except (KeyError, ValueError) as error:
            return defer(f"cannot reason about this scene: {error}", Source.SCRIPTED)
        opening = observation.gripper_opening
        goal = self.subgoal(task, observation.ee_position, cube, mat, gripper_opening=opening)
        return self.proposal_for(goal, observation.ee_position)

    def propose_for(self, env_obs: Mapping[str, Any], task: TaskSpec) -> CoarseProposal:
        """Proposal from an environment observation dict for a known task (uses the gripper)."""
        ee = np.asarray(env_obs["ee_pos"], dtype=float)
        cube = np.asarray(env_obs["object_pos"][task.object_index], dtype=float)
        mat = None
        if task.target_index is not None:
            mat = np.asarray(env_obs["target_pos"][task.target_index], dtype=float)
        opening = float(np.asarray(env_obs["gripper"]).reshape(-1)[0])
        goal = self.subgoal(task, ee, cube, mat, gripper_opening=opening)
        return self.proposal_for(goal, ee)

    # ------------------------------------------------------------------ sub-goals
    def subgoal(
        self,
        task: TaskSpec,
        ee: np.ndarray,
        cube: np.ndarray,
        mat: np.ndarray | None,
        gripper_opening: float | None = None,
    ) -> SubGoal:
        """Current phase and sub-goal of ``task`` from the true poses (geometry, no randomness
        beyond the episode's perception errors: relations are judged on the true poses, the
        sub-goal is aimed at the perceived ones)."""
        ee, cube = np.asarray(ee, float), np.asarray(cube, float)
        mat = None if mat is None else np.asarray(mat, float)
        seen_mat = None if mat is None else mat + self.aim_offsets[f"{task.target}{MAT_SUFFIX}"]
        if task.verb == "push":
            if _push_done(cube, mat):
                return SubGoal(
                    "done", ee.copy(), defer=True, hold=Gripper.CLOSE, reason="cube sits on the mat"
                )
            seen_cube = cube + self.aim_offsets[f"{task.obj}{CUBE_SUFFIX}"]
            return dataclasses.replace(self._push(ee, seen_cube, seen_mat), hold=Gripper.CLOSE)
        holding = _holding(ee, cube, gripper_opening)
        if (
            not holding
            and task.verb == "place"
            and _on_mat(cube, mat)
            and cube[2] < CUBE_HALF_SIZE + 0.01
        ):
            return SubGoal(
                "done", ee.copy(), defer=True, hold=Gripper.OPEN, reason="cube rests on the mat"
            )
        # a held cube is seen in the gripper: no perception error while carrying it
        seen_cube = cube if holding else cube + self.aim_offsets[f"{task.obj}{CUBE_SUFFIX}"]
        goal = self._pick(task, ee, seen_cube, seen_mat, gripper_opening, holding)
        return dataclasses.replace(goal, hold=Gripper.CLOSE if holding else Gripper.OPEN)

    def _pick(
        self,
        task: TaskSpec,
        ee: np.ndarray,
        cube: np.ndarray,
        mat: np.ndarray | None,
        gripper_opening: float | None,
        holding: bool,
    ) -> SubGoal:
        """Sub-goal of a lift or place: to the grasp, then up or over the mat and down."""
        if holding:
            if task.verb == "lift":
                return SubGoal("lift", np.array([*ee[:2], LIFT_HEIGHT]), reason="raise the cube")
            release = np.array([*mat[:2], PLACE_HEIGHT])
            if float(np.linalg.norm(cube[:2] - mat[:2])) < self.config.drop_radius:
                return SubGoal(
                    "drop", release, slow=True, gripper=Gripper.OPEN, reason="let go above the mat"
                )
            goal = self._approach(ee, release, CARRY_HEIGHT, "release", "over the mat")
            if goal.defer and self.config.command_release:
                return SubGoal(
                    "open", release, slow=True, gripper=Gripper.OPEN, reason="let go over the mat"
                )
            return goal
        grasp = np.array([*cube[:2], GRASP_HEIGHT])
        if self.config.command_grasp:
            if gripper_opening is not None and gripper_opening < GRIPPER_OPEN_ENOUGH:
                return SubGoal("reopen", ee.copy(), gripper=Gripper.OPEN, reason="open to grasp")
            if float(np.linalg.norm(grasp - ee)) <= self.config.close_radius:
                return SubGoal(
                    "close", grasp, slow=True, gripper=Gripper.CLOSE, reason="grasp the cube"
                )
        return self._approach(ee, grasp, HOVER_HEIGHT, "grasp", "at the cube")

    def _approach(
        self, ee: np.ndarray, point: np.ndarray, travel_height: float, name: str, where: str
    ) -> SubGoal:
        """Travel above ``point`` at ``travel_height``, go down, defer near ``point``."""
        cfg = self.config
        distance = float(np.linalg.norm(point - ee))
        if cfg.hands_over(name) and distance <= cfg.defer_radius:
            return SubGoal(
                name,
                point,
                defer=True,
                reason=f"{distance:.3f} m from the {name} point {where}, within "
                f"{cfg.defer_radius:.3f} m: the policy finishes",
            )
        if float(np.linalg.norm(point[:2] - ee[:2])) <= cfg.align_radius:
            return SubGoal(f"descend_{name}", point, reason=f"down to the {name} point {where}")
        above = np.array([*point[:2], travel_height])
        return SubGoal(f"above_{name}", above, reason=f"above the {name} point {where}")

    def _push(self, ee: np.ndarray, cube: np.ndarray, mat: np.ndarray) -> SubGoal:
        """Sub-goal of a push not yet done (``cube`` and ``mat`` as perceived)."""
        cfg = self.config
        to_mat = mat[:2] - cube[:2]
        d = to_mat / max(float(np.linalg.norm(to_mat)), 1e-9)
        perp = np.array([-d[1], d[0]])
        rel = ee[:2] - cube[:2]
        along, lateral = float(rel @ d), float(rel @ perp)
        if along < -0.03 and abs(lateral) < 0.025 and ee[2] < PUSH_HEIGHT + 0.02:
            goal_xy = mat[:2] - d * PUSH_CONTACT
            return SubGoal(
                "push_through",
                np.array([*goal_xy, PUSH_HEIGHT]),
                slow=True,
                reason="push the cube along the line to the mat",
            )
        contact = np.array([*(cube[:2] - d * PUSH_STANDOFF), PUSH_HEIGHT])
        if ee[2] < HOVER_HEIGHT - 0.03 and float(np.linalg.norm(rel)) < 0.09:
            if float(np.linalg.norm(contact - ee)) > cfg.defer_radius and along > -0.02:
                up = np.array([*ee[:2], HOVER_HEIGHT])
                return SubGoal("clear", up, reason="rise to clear the cube before going round")
        return self._approach(ee, contact, HOVER_HEIGHT, "push", "behind the cube")

    # ------------------------------------------------------------------ coarse proposal
    def coarse_direction(self, offset: np.ndarray) -> np.ndarray:
        """Noiseless coarse direction of a free offset (quantised or exact unit vector)."""
        cfg = self.config
        if cfg.quantize:
            return quantize_direction(
                offset, dead_band=cfg.dead_band, relative_threshold=cfg.relative_threshold
            )
        offset = np.where(np.abs(offset) > cfg.dead_band, offset, 0.0)
        return unit_or_zero(offset)

    def corrupt(self, direction: np.ndarray) -> tuple[np.ndarray, str]:
        """Apply the angular-noise and wrong-direction knobs (in that order)."""
        cfg = self.config
        note = ""
        if cfg.angular_noise_deg > 0.0:
            direction = _rotate_random(direction, math.radians(cfg.angular_noise_deg), self.rng)
        if cfg.wrong_direction_rate > 0.0 and self.rng.random() < cfg.wrong_direction_rate:
            direction, note = -direction, " (wrong direction)"
        return np.asarray(direction, dtype=float), note

    def proposal_for(self, goal: SubGoal, ee: np.ndarray) -> CoarseProposal:
        """Turn a sub-goal into a coarse proposal (or a deferral) from EE position ``ee``."""
        if goal.defer:
            return CoarseProposal(
                source=Source.SCRIPTED, defer=True, target=goal.point, reason=goal.reason
            )
        if goal.gripper is not Gripper.KEEP:  # a gripper command: no motion asked for
            return CoarseProposal(
                source=Source.SCRIPTED,
                magnitude=MAGNITUDE_LESS,
                gripper=goal.gripper,
                target=goal.point,
                reason=f"{goal.phase}: {goal.reason}",
            )
        offset = goal.point - np.asarray(ee, dtype=float)
        direction = self.coarse_direction(offset)
        if not direction.any():
            return CoarseProposal(
                source=Source.SCRIPTED,
                defer=True,
                target=goal.point,
                reason=f"{goal.phase}: offset within the dead band",
            )
        direction, note = self.corrupt(direction)
        gripper = goal.hold if self.config.state_gripper else Gripper.KEEP
        distance = float(np.linalg.norm(offset))
        slow = goal.slow or distance < self.config.slow_radius
        magnitude = MAGNITUDE_LESS if slow else MAGNITUDE_MORE
        if distance < self.config.fine_radius:
            magnitude = MAGNITUDE_LITTLE
        return CoarseProposal(
            source=Source.SCRIPTED,
            direction=direction,
            magnitude=magnitude,
            gripper=gripper,
            target=goal.point,
            reason=f"{goal.phase}: {goal.reason}, {distance:.3f} m away{note}",
        )
