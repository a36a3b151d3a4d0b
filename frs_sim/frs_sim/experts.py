"""Scripted experts that solve every task, emitting chunked end-effector actions.

The expert is stateless: each call reads the current observation (ground-truth poses), infers the
phase (reach, align, descend, grasp, carry, release, push, retreat) from geometry, and plans a
whole ``(horizon, 8)`` chunk by rolling a simple kinematic model forward (the EE follows commands
exactly; a held cube moves with the EE; a pushed cube stays in front of the fingers). Only the
first rows are executed before re-planning, so modelling errors are corrected closed-loop.
Action rows use the environment's convention (see ``env`` module docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from frs_sim.env import (
    ACTION_DIM,
    CHUNK_HORIZON,
    GRASP_HEIGHT,
    MAT_SUCCESS_HALF,
    EnvConfig,
    yaw_of_quaternion,
)
from frs_sim.scene import CUBE_HALF_SIZE
from frs_sim.tasks import TaskSpec

HOVER_HEIGHT = 0.12  # EE-site height for travelling above cubes, metres
CARRY_HEIGHT = 0.15  # EE-site height while carrying a cube
LIFT_HEIGHT = 0.22  # EE-site height a lift task ends at
PLACE_HEIGHT = GRASP_HEIGHT + 0.006  # EE-site height at which a carried cube is released
PUSH_HEIGHT = 0.06  # EE-site height while pushing (fingertips ~1 cm above the table)
PUSH_CONTACT = 0.045  # EE-to-cube-centre distance along the push direction when in contact
PUSH_STANDOFF = 0.065  # EE starts a push this far behind the cube centre
APPROACH_SPEED = 0.05  # metres per step in free space
CONTACT_SPEED = 0.02  # metres per step in the last centimetres before contact
PUSH_SPEED = 0.025  # metres per step while pushing
YAW_SPEED = 0.2  # radians per step
FAR_XY = 0.03  # beyond this horizontal error the EE travels at a safe height
ALIGNED_XY = 0.006  # within this horizontal error the EE may descend
SMALL_MOVE_GAIN = 0.6  # fraction of a small (<< 5 cm) position error commanded per step


@dataclass
class _Virtual:
    """Kinematic model the expert rolls forward to fill a chunk."""

    ee: np.ndarray  # (3,) EE-site position
    yaw: float  # EE yaw
    grip: float  # gripper command, 0 open / 1 closed
    holding: bool  # the task cube is between closed fingers
    cube: np.ndarray  # (3,) task cube centre
    cube_yaw: float
    target: np.ndarray | None  # (3,) mat centre


def _wrap_quarter(angle: float) -> float:
    """Wrap an angle to [-pi/4, pi/4) (a cube looks the same every 90 degrees)."""
    return float((angle + np.pi / 4) % (np.pi / 2) - np.pi / 4)


def _clip_norm(vec: np.ndarray, limit: float) -> np.ndarray:
    norm = float(np.linalg.norm(vec))
    return vec * (limit / norm) if norm > limit else vec


class ScriptedExpert:
    """Ground-truth expert for lift / place / push; call with an observation dict and a task."""

    def __init__(self, horizon: int = CHUNK_HORIZON, config: EnvConfig | None = None) -> None:
        self.horizon = horizon
        self.config = config or EnvConfig()

    def __call__(self, obs: dict, task: TaskSpec) -> np.ndarray:
        """Plan a ``(horizon, 8)`` action chunk from the current observation."""
        v = self._virtual_from_obs(obs, task)
        chunk = np.zeros((self.horizon, ACTION_DIM), dtype=np.float32)
        for k in range(self.horizon):
            move, dyaw, grip = self._policy(v, task)
            # Soften small corrections: the arm lags about one control step, and a unit-gain
            # chase of the measured pose rings around the goal.
            scale = min(
                1.0, SMALL_MOVE_GAIN + (1.0 - SMALL_MOVE_GAIN) * np.linalg.norm(move) / 0.05
            )
            move = _clip_norm(move * scale, self.config.max_translation)
            dyaw = float(np.clip(dyaw, -YAW_SPEED, YAW_SPEED))
            chunk[k, 0:3] = move
            chunk[k, 5] = dyaw
            chunk[k, 6] = grip
            self._advance(v, move, dyaw, grip, task)
        return chunk

    # ------------------------------------------------------------------ state inference
    def _virtual_from_obs(self, obs: dict, task: TaskSpec) -> _Virtual:
        i = task.object_index
        ee = np.asarray(obs["ee_pos"], dtype=float)
        quat = np.asarray(obs["ee_quat"], dtype=float)
        w, x, y, z = quat
        yaw = float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))
        cube = np.asarray(obs["object_pos"][i], dtype=float)
        opening = float(obs["gripper"][0])
        rel = cube - ee
        between = float(np.linalg.norm(rel[:2])) < 0.025 and -0.06 < rel[2] < -0.005
        holding = between and opening < 0.6 and task.verb != "push"
        target = None if task.target is None else np.asarray(obs["target_pos"][task.target_index])
        grip = 0.0 if opening > 0.9 else 1.0
        return _Virtual(
            ee.copy(),
            yaw,
            grip,
            holding,
            cube.copy(),
            yaw_of_quaternion(obs["object_quat"][i]),
            None if target is None else np.asarray(target, dtype=float).copy(),
        )

    # ------------------------------------------------------------------ phase logic
    def _policy(self, v: _Virtual, task: TaskSpec) -> tuple[np.ndarray, float, float]:
        if task.verb == "push":
            return self._push(v)
        return self._pick(v, task)

    def _cube_on_target(self, v: _Virtual, margin: float = 0.0) -> bool:
        if v.target is None:
            return False
        return bool(np.all(np.abs(v.cube[:2] - v.target[:2]) <= MAT_SUCCESS_HALF - margin))

    def _pick(self, v: _Virtual, task: TaskSpec) -> tuple[np.ndarray, float, float]:
        ee, cube = v.ee, v.cube
        if v.holding:
            if task.verb == "lift":
                return np.array([0.0, 0.0, LIFT_HEIGHT - ee[2]]), 0.0, 1.0
            offset = ee[:2] - cube[:2]  # keep the grasp offset while carrying
            goal_xy = v.target[:2] + offset
            err_xy = goal_xy - ee[:2]
            dist_xy = float(np.linalg.norm(err_xy))
            if dist_xy > FAR_XY:  # travel at carry height (rise first when low)
                if ee[2] < CARRY_HEIGHT - 0.03:
                    return np.array([0.3 * err_xy[0], 0.3 * err_xy[1], 0.05]), 0.0, 1.0
                return np.array([*err_xy, CARRY_HEIGHT - ee[2]]), 0.0, 1.0
            if dist_xy > ALIGNED_XY:  # close: centre over the mat without changing height
                return np.array([*err_xy, 0.0]), 0.0, 1.0
            dz = PLACE_HEIGHT - ee[2]
            if dz < -0.004:
                speed = APPROACH_SPEED if -dz > 0.05 else CONTACT_SPEED
                return np.array([*err_xy, max(dz, -speed)]), 0.0, 1.0
            return np.zeros(3), 0.0, 0.0  # release over the mat
        if task.verb == "place" and self._cube_on_target(v) and cube[2] < CUBE_HALF_SIZE + 0.01:
            return np.array([0.0, 0.0, HOVER_HEIGHT - ee[2]]), 0.0, 0.0  # done: back off
        err_xy = cube[:2] - ee[:2]
        dist_xy = float(np.linalg.norm(err_xy))
        dyaw = _wrap_quarter(v.cube_yaw - v.yaw)
        if v.grip > 0.5:  # closed on nothing: open and back off
            return np.array([0.0, 0.0, 0.02]), 0.0, 0.0
        if dist_xy > FAR_XY:  # travel at hover height (rise first when low)
            if ee[2] < HOVER_HEIGHT - 0.03:
                return np.array([0.3 * err_xy[0], 0.3 * err_xy[1], 0.05]), dyaw, 0.0
            return np.array([*err_xy, HOVER_HEIGHT - ee[2]]), dyaw, 0.0
        if dist_xy > ALIGNED_XY or abs(dyaw) > 0.06:  # centre and align without descending
            return np.array([*err_xy, 0.0]), dyaw, 0.0
        dz = GRASP_HEIGHT - ee[2]
        if dz < -0.004:
            speed = APPROACH_SPEED if -dz > 0.05 else CONTACT_SPEED
            return np.array([*err_xy, max(dz, -speed)]), dyaw, 0.0
        return np.zeros(3), 0.0, 1.0  # close on the cube

    def _push(self, v: _Virtual) -> tuple[np.ndarray, float, float]:
        ee, cube, target = v.ee, v.cube, v.target
        to_target = target[:2] - cube[:2]
        dist = float(np.linalg.norm(to_target))
        if dist < 0.012 or (self._cube_on_target(v, margin=0.03) and dist < 0.02):
            return np.array([0.0, 0.0, HOVER_HEIGHT - ee[2]]), 0.0, 1.0  # done: lift away
        d = to_target / max(dist, 1e-9)
        perp = np.array([-d[1], d[0]])
        rel = ee[:2] - cube[:2]
        along, lateral = float(rel @ d), float(rel @ perp)
        behind = along < -0.03 and abs(lateral) < 0.025
        if behind and ee[2] < PUSH_HEIGHT + 0.01:
            # in contact (or nearly): advance along the push line, centre laterally
            step = min(PUSH_SPEED, dist + 0.01)
            move_xy = d * step - perp * 0.6 * lateral
            return np.array([*move_xy, PUSH_HEIGHT - ee[2]]), 0.0, 1.0
        pre = cube[:2] - d * PUSH_STANDOFF
        err_pre = pre - ee[:2]
        dist_pre = float(np.linalg.norm(err_pre))
        dz = PUSH_HEIGHT - ee[2]
        speed = APPROACH_SPEED if -dz > 0.05 else CONTACT_SPEED
        if dist_pre < 0.015 or (along < -0.02 and abs(lateral) < 0.025 and dist_pre < 0.04):
            # behind the cube: descend to pushing height, correcting toward the start point
            return np.array([*err_pre, max(dz, -speed)]), 0.0, 1.0
        if ee[2] < HOVER_HEIGHT - 0.03 and np.linalg.norm(rel) < 0.09:
            return np.array([0.0, 0.0, 0.05]), 0.0, 1.0  # clear the cube before going round
        return np.array([*err_pre, HOVER_HEIGHT - ee[2]]), 0.0, 1.0

    # ------------------------------------------------------------------ kinematic rollout
    def _advance(
        self, v: _Virtual, move: np.ndarray, dyaw: float, grip: float, task: TaskSpec
    ) -> None:
        low, high = np.array(self.config.workspace_low), np.array(self.config.workspace_high)
        v.ee = np.clip(v.ee + move, low, high)
        v.yaw += dyaw
        if v.holding:
            v.cube = v.cube + move
            v.cube_yaw += dyaw
            if grip < 0.5:  # released: the cube drops onto the table
                v.holding = False
                v.cube[2] = CUBE_HALF_SIZE
        elif grip > 0.5 and v.grip < 0.5 and task.verb != "push":
            rel = v.cube - v.ee
            if np.linalg.norm(rel[:2]) < 0.02 and -0.06 < rel[2] < -0.005:
                v.holding = True
        elif task.verb == "push" and v.target is not None:
            to_target = v.target[:2] - v.cube[:2]
            dist = float(np.linalg.norm(to_target))
            if dist > 1e-9 and v.ee[2] < PUSH_HEIGHT + 0.02:
                d = to_target / dist
                along = float((v.ee[:2] - v.cube[:2]) @ d)
                if -PUSH_CONTACT < along < 0.0:
                    v.cube[:2] += d * (along + PUSH_CONTACT)
        v.grip = grip


def run_expert_episode(
    env, expert: ScriptedExpert, seed: int, task: TaskSpec | None = None, execute_rows: int = 1
) -> tuple[bool, int]:
    """Roll the expert out on ``env`` (re-planning every ``execute_rows`` rows).

    Returns (success, number of control steps).
    """
    options = None if task is None else {"task": task}
    obs, _ = env.reset(seed=seed, options=options)
    steps = 0
    while True:
        chunk = expert(obs, env.task)
        result = env.execute_chunk(chunk, n_rows=execute_rows)
        steps += len(result.rewards)
        obs = result.last_observation
        if result.done:
            return bool(result.infos[-1]["success"]), steps
