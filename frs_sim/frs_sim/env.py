"""Gymnasium environment: a MuJoCo Panda on a table with coloured cubes and target mats.

Action (one row, shape ``(8,)``, float): ``(dx, dy, dz, droll, dpitch, dyaw, gripper, pad)``

* ``dx, dy, dz`` - end-effector translation for this 0.1 s control step, metres, in the robot base
  frame (``fr3_link0``; x forward, y left, z up). The vector is norm-clipped to
  ``max_translation`` (5 cm, i.e. 0.5 m/s).
* ``droll, dpitch, dyaw`` - end-effector rotation for this step as an axis-angle vector in the
  base frame, radians, norm-clipped to ``max_rotation`` (0.25 rad).
* ``gripper`` - absolute gripper command in ``[0, 1]``: 0 = fully open (8 cm), 1 = closed.
* ``pad`` - padding to 8 dims (as pi0.5 pads its action space); send 0, any value is ignored.

Bad rows (wrong shape, NaN/inf) raise ``ValueError``; finite out-of-range values are clipped.

Each row is executed at 10 Hz: the deltas move an internal goal pose (leashed to within 6 cm /
0.5 rad of the measured pose, clipped to the workspace box), damped-least-squares IK on the arm
Jacobian turns the goal into joint targets for the position actuators, and physics runs
``control_dt / timestep`` = 50 substeps. Use ``execute_chunk`` to run a ``(horizon, 8)`` chunk.

Observation (dict; all positions in the base frame, metres): ``state`` (flat float32 vector, see
``STATE_LAYOUT``), ``ee_pos`` (3), ``ee_quat`` (4, w x y z), ``gripper`` (1, opening in [0, 1],
1 = open), ``joint_pos`` (7, rad), ``object_pos`` (n_obj, 3), ``object_quat`` (n_obj, 4),
``target_pos`` (n_tgt, 3), ``instruction`` (text), ``instruction_embedding`` (384, MiniLM) and,
when ``EnvConfig.image_obs`` is set, ``image`` (H, W, 3) uint8 from ``EnvConfig.camera``.

Reward is 1.0 on the step the task's success detector fires (the episode then terminates), else
0.0. A cube falling off the table also terminates; ``max_episode_steps`` (80 = 8 s) truncates.
The robot base sits at the world origin, so base-frame and world coordinates coincide here, but
every public pose goes through the base body's pose (``ee_pose_in_base``, ``object_positions``).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from frs_sim import scene as sc
from frs_sim.ik import (
    DampedLeastSquaresIK,
    axis_angle_to_matrix,
    rotation_error,
)
from frs_sim.tasks import TaskSpec, get_split
from frs_steering.instructions import EMBEDDING_DIM, embed_instruction

ACTION_DIM = 8  # padded row width
ACTION_REAL_DIM = 7  # dx dy dz droll dpitch dyaw gripper
CHUNK_HORIZON = 10  # rows per chunk: 1 s at 10 Hz
N_OBJECTS = len(sc.OBJECT_NAMES)
N_TARGETS = len(sc.TARGET_NAMES)

HOME_EE_POS = np.array([0.45, 0.0, 0.25])  # metres, base frame
#: Gripper pointing straight down, fingers closing along the base y axis (EE yaw 0).
HOME_EE_ROT = np.diag([1.0, -1.0, -1.0])
_REST_QPOS = np.array([0.0, -0.2, 0.0, -2.5, 0.0, 0.75, 0.0])  # IK seed and null-space posture

GRASP_HEIGHT = sc.CUBE_HALF_SIZE + 0.035  # EE-site height that centres the finger pads on a cube
LIFT_SUCCESS_HEIGHT = sc.CUBE_HALF_SIZE + 0.08  # cube centre height counted as lifted
PUSH_MAX_LIFT = 0.02  # a push fails once the cube was raised more than this
MAT_SUCCESS_HALF = sc.MAT_HALF_SIZE - 0.01  # cube centre must be this close to the mat centre


def _state_layout() -> dict[str, slice]:
    sizes = [
        ("ee_pos", 3),  # EE-site position, base frame, m
        ("ee_yaw", 2),  # sin, cos of EE yaw about base z
        ("gripper", 1),  # finger opening in [0, 1], 1 = open
        ("joint_pos", 7),  # arm joints, rad
        ("object_pos", 3 * N_OBJECTS),  # cube centres (red, green, blue), m
        ("object_yaw", 2 * N_OBJECTS),  # sin, cos of 4*yaw per cube (cubes repeat every 90 deg)
        ("object_rel", 3 * N_OBJECTS),  # cube centre minus EE position per cube, m
        ("target_pos", 3 * N_TARGETS),  # mat centres (yellow, purple, white), m
        # Motion, last so that a policy reading positions only takes the first
        # POSITION_STATE_DIM floats (``policy_state``):
        ("ee_velocity", 3),  # EE-site linear velocity, base frame, m/s
    ]
    layout, start = {}, 0
    for name, size in sizes:
        layout[name] = slice(start, start + size)
        start += size
    return layout


#: Named slices of the flat ``state`` vector (49 floats for 3 cubes and 3 mats).
STATE_LAYOUT: dict[str, slice] = _state_layout()
STATE_DIM: int = max(s.stop for s in STATE_LAYOUT.values())
#: The positions-only prefix of ``state`` (everything but ``ee_velocity``): what policies that do
#: not read the arm's motion (the first generalist) condition on.
POSITION_STATE_DIM: int = STATE_LAYOUT["ee_velocity"].start
#: The state sizes a tabletop policy may read: positions only, or positions and motion.
POLICY_STATE_DIMS: tuple[int, ...] = (POSITION_STATE_DIM, STATE_DIM)

_POSITION_BOUND = 5.0  # metres; finite observation bounds (a dropped cube ends the episode)
_RAMP_SEGMENTS = 5  # joint targets are interpolated in this many pieces per control period
_TEXT_CHARSET = string.ascii_letters + string.digits + " ,.;:'!?-"


@dataclass(frozen=True)
class EnvConfig:
    """Tunable settings of the tabletop environment (all SI units)."""

    control_dt: float = 0.1  # seconds per action row (10 Hz)
    max_episode_steps: int = 80  # control steps before truncation (8 s)
    max_translation: float = 0.05  # metres per control step (norm clip)
    max_rotation: float = 0.25  # radians per control step (norm clip)
    goal_leash_pos: float = 0.06  # max goal-vs-measured EE distance, metres
    goal_leash_rot: float = 0.5  # max goal-vs-measured EE rotation, radians
    workspace_low: tuple[float, float, float] = (0.2, -0.45, 0.045)  # EE-site box, metres
    workspace_high: tuple[float, float, float] = (0.8, 0.45, 0.5)
    ee_start_noise: float = 0.03  # uniform +/- metres around HOME_EE_POS at reset
    object_yaw_range: float = np.pi / 4  # cubes start with yaw uniform in +/- this, radians
    object_region_low: tuple[float, float] = (0.38, -0.27)  # x, y sampling box for cubes/mats
    object_region_high: tuple[float, float] = (0.66, 0.27)
    image_obs: bool = False  # add an RGB ``image`` to every observation
    camera: str = "front"  # one of scene.CAMERA_NAMES
    image_width: int = 128
    image_height: int = 128
    ik_iterations: int = 8


@dataclass
class ChunkRollout:
    """What executing (part of) an action chunk produced, one entry per executed row."""

    observations: list[dict[str, Any]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    infos: list[dict[str, Any]] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False

    @property
    def done(self) -> bool:
        """Whether the episode ended inside this chunk."""
        return self.terminated or self.truncated

    @property
    def last_observation(self) -> dict[str, Any]:
        """Observation after the last executed row."""
        return self.observations[-1]


def yaw_of_rotation(rot: np.ndarray) -> float:
    """Heading (rotation about z, radians) of a 3x3 rotation matrix."""
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


def yaw_of_quaternion(quat: np.ndarray) -> float:
    """Heading (rotation about z, radians) of a (w, x, y, z) quaternion."""
    w, x, y, z = (float(v) for v in quat)
    return float(np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z)))


class FrankaTabletopEnv(gym.Env):
    """Panda tabletop benchmark with chunked end-effector actions and language-specified tasks."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        tasks: str | Sequence[TaskSpec] = "pretrain",
        config: EnvConfig | None = None,
        render_mode: str | None = None,
        embed_fn: Callable[[str], np.ndarray] | None = None,
    ) -> None:
        """Create the scene; ``tasks`` is a split name or explicit task list sampled at reset.

        ``embed_fn`` maps an instruction to its 384-d embedding (default: offline MiniLM).
        """
        self.config = config or EnvConfig()
        self.tasks: tuple[TaskSpec, ...] = (
            get_split(tasks) if isinstance(tasks, str) else tuple(tasks)
        )
        if not self.tasks:
            raise ValueError("the environment needs at least one task")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"unsupported render_mode {render_mode!r}")
        if self.config.camera not in sc.CAMERA_NAMES:
            raise ValueError(f"camera must be one of {sc.CAMERA_NAMES}")
        self.render_mode = render_mode
        self._embed = embed_fn or embed_instruction

        cfg = self.config
        self.model = sc.build_model(cfg.image_width, cfg.image_height)
        self.data = mujoco.MjData(self.model)
        self.idx = sc.index_scene(self.model)
        self.n_substeps = int(round(cfg.control_dt / self.model.opt.timestep))
        self.ik = DampedLeastSquaresIK(
            self.model,
            self.idx.ee_site,
            self.idx.arm_qpos,
            self.idx.arm_dof,
            self.idx.arm_range,
            rest_qpos=_REST_QPOS,
        )
        self.home_qpos = self.ik.solve(HOME_EE_POS, HOME_EE_ROT, _REST_QPOS, max_iters=200).qpos
        self._ws_low = np.array(cfg.workspace_low)
        self._ws_high = np.array(cfg.workspace_high)
        self._renderer: mujoco.Renderer | None = None

        f32 = np.float32
        big = _POSITION_BOUND
        joint_low, joint_high = self.idx.arm_range.T.astype(f32)
        obs_spaces: dict[str, spaces.Space] = {
            "state": spaces.Box(-big, big, (STATE_DIM,), f32),
            "ee_pos": spaces.Box(-big, big, (3,), f32),
            "ee_quat": spaces.Box(-1.0, 1.0, (4,), f32),
            "gripper": spaces.Box(0.0, 1.0, (1,), f32),
            "joint_pos": spaces.Box(joint_low - 0.05, joint_high + 0.05, dtype=f32),
            "object_pos": spaces.Box(-big, big, (N_OBJECTS, 3), f32),
            "object_quat": spaces.Box(-1.0, 1.0, (N_OBJECTS, 4), f32),
            "target_pos": spaces.Box(-big, big, (N_TARGETS, 3), f32),
            "instruction": spaces.Text(max_length=200, min_length=1, charset=_TEXT_CHARSET),
            "instruction_embedding": spaces.Box(-1.0, 1.0, (EMBEDDING_DIM,), f32),
        }
        if cfg.image_obs:
            obs_spaces["image"] = spaces.Box(
                0, 255, (cfg.image_height, cfg.image_width, 3), np.uint8
            )
        self.observation_space = spaces.Dict(obs_spaces)
        # The padding dim (index 7) accepts any value in [-1, 1] and is ignored.
        high = np.array([cfg.max_translation] * 3 + [cfg.max_rotation] * 3 + [1.0, 1.0], dtype=f32)
        low = -high
        low[6] = 0.0
        self.action_space = spaces.Box(low, high, dtype=f32)

        self.task: TaskSpec = self.tasks[0]
        self.template_id = self.task.template_ids[0]
        self.instruction = ""
        self.instruction_embedding = np.zeros(EMBEDDING_DIM, np.float32)
        self._goal_pos = HOME_EE_POS.copy()
        self._goal_rot = HOME_EE_ROT.copy()
        self._q_des = self.home_qpos.copy()
        self._gripper_cmd = 0.0
        self._steps = 0
        self._max_cube_height = np.zeros(N_OBJECTS)
        self._reset_called = False

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Sample a task, template, object/mat layout and start pose from the seeded RNG.

        ``options`` may fix ``task`` (a ``TaskSpec`` or its name) and ``template_id``.
        """
        super().reset(seed=seed)
        options = options or {}
        rng = self.np_random
        task_opt = options.get("task")
        if task_opt is None:
            self.task = self.tasks[int(rng.integers(len(self.tasks)))]
        elif isinstance(task_opt, TaskSpec):
            self.task = task_opt
        else:
            matches = [t for t in self.tasks if t.name == task_opt]
            if not matches:
                raise ValueError(f"task {task_opt!r} is not among this environment's tasks")
            self.task = matches[0]
        template_id = options.get("template_id")
        if template_id is None:
            template_id = int(rng.choice(self.task.template_ids))
        self.template_id = int(template_id)
        self.instruction = self.task.instruction(self.template_id)
        self.instruction_embedding = np.asarray(self._embed(self.instruction), dtype=np.float32)

        cubes_xy, mats_xy = self._sample_layout(rng)
        if self.task.nearest_mat:  # "the nearest mat" must be the task's: swap two mat positions
            cube_xy = cubes_xy[self.task.object_index]
            nearest = int(np.argmin(np.linalg.norm(np.asarray(mats_xy) - cube_xy, axis=1)))
            mats_xy = np.array(mats_xy, copy=True)
            mats_xy[[nearest, self.task.target_index]] = mats_xy[[self.task.target_index, nearest]]
        cfg = self.config
        mujoco.mj_resetData(self.model, self.data)
        start_pos = HOME_EE_POS + rng.uniform(-cfg.ee_start_noise, cfg.ee_start_noise, 3)
        q_start = self.ik.solve(start_pos, HOME_EE_ROT, self.home_qpos, max_iters=50).qpos
        self.data.qpos[self.idx.arm_qpos] = q_start
        self.data.qpos[self.idx.finger_qpos] = 0.04
        for i in range(N_OBJECTS):
            adr = self.idx.cube_qpos[i]
            yaw = rng.uniform(-cfg.object_yaw_range, cfg.object_yaw_range)
            self.data.qpos[adr : adr + 3] = (*cubes_xy[i], sc.CUBE_HALF_SIZE + 1e-4)
            self.data.qpos[adr + 3 : adr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        for i in range(N_TARGETS):
            self.data.mocap_pos[self.idx.mat_mocap[i]] = (*mats_xy[i], 0.0006)
        self._q_des = q_start.copy()
        self._gripper_cmd = 0.0
        self._apply_ctrl()
        mujoco.mj_forward(self.model, self.data)
        mujoco.mj_step(self.model, self.data, nstep=10)  # let contacts settle
        ee_pos, ee_rot = self._ee_world()
        self._goal_pos = ee_pos.copy()
        self._goal_rot = ee_rot.copy()
        self._steps = 0
        self._max_cube_height = self._cube_positions()[:, 2].copy()
        self._reset_called = True
        return self._observation(), self._info()

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Execute one 8-d action row for one 0.1 s control period."""
        if not self._reset_called:
            raise RuntimeError("call reset() before step()")
        row = self.validate_action(action)
        q_prev = self._q_des.copy()
        self._apply_row(row)
        self._run_substeps(q_prev, self._q_des)
        self._steps += 1
        self._max_cube_height = np.maximum(self._max_cube_height, self._cube_positions()[:, 2])
        success = self.is_success()
        dropped = bool(np.any(self._cube_positions()[:, 2] < sc.TABLE_TOP_Z - 0.1))
        terminated = success or dropped
        truncated = (not terminated) and self._steps >= self.config.max_episode_steps
        info = self._info()
        info["dropped_object"] = dropped
        return self._observation(), float(success), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """RGB frame (H, W, 3) uint8 from the configured camera (``render_mode='rgb_array'``)."""
        if self.render_mode != "rgb_array":
            return None
        return self.render_camera()

    def close(self) -> None:
        """Release the offscreen renderer."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ chunks and actions
    def validate_action(self, action: np.ndarray) -> np.ndarray:
        """Check shape/finiteness of one row and clip it to the documented limits."""
        row = np.asarray(action, dtype=np.float64)
        if row.shape != (ACTION_DIM,):
            raise ValueError(
                f"action must have shape ({ACTION_DIM},) = (dx, dy, dz, droll, dpitch, dyaw, "
                f"gripper, pad); got {row.shape}"
            )
        if not np.all(np.isfinite(row)):
            raise ValueError(f"action contains NaN or inf: {row}")
        cfg = self.config
        out = np.zeros(ACTION_DIM)
        out[0:3] = _norm_clip(row[0:3], cfg.max_translation)
        out[3:6] = _norm_clip(row[3:6], cfg.max_rotation)
        out[6] = np.clip(row[6], 0.0, 1.0)
        return out

    def execute_chunk(self, chunk: np.ndarray, n_rows: int | None = None) -> ChunkRollout:
        """Run the first ``n_rows`` rows (all by default) of a ``(horizon, 8)`` chunk.

        Stops early when the episode terminates or truncates.
        """
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM:
            raise ValueError(f"chunk must have shape (horizon, {ACTION_DIM}); got {chunk.shape}")
        if not np.all(np.isfinite(chunk)):
            raise ValueError("chunk contains NaN or inf")
        n = chunk.shape[0] if n_rows is None else int(n_rows)
        if not 0 < n <= chunk.shape[0]:
            raise ValueError(f"n_rows must be in 1..{chunk.shape[0]}; got {n_rows}")
        result = ChunkRollout()
        for row in chunk[:n]:
            obs, reward, terminated, truncated, info = self.step(row)
            result.observations.append(obs)
            result.rewards.append(reward)
            result.infos.append(info)
            if terminated or truncated:
                result.terminated, result.truncated = terminated, truncated
                break
        return result

    def _apply_row(self, row: np.ndarray) -> None:
        cfg = self.config
        ee_pos, ee_rot = self._ee_world()
        goal = np.clip(self._goal_pos + row[0:3], self._ws_low, self._ws_high)
        offset = goal - ee_pos
        dist = float(np.linalg.norm(offset))
        if dist > cfg.goal_leash_pos:
            goal = ee_pos + offset * (cfg.goal_leash_pos / dist)
        goal_rot = axis_angle_to_matrix(row[3:6]) @ self._goal_rot
        rot_off = rotation_error(goal_rot, ee_rot)
        angle = float(np.linalg.norm(rot_off))
        if angle > cfg.goal_leash_rot:
            goal_rot = axis_angle_to_matrix(rot_off * (cfg.goal_leash_rot / angle)) @ ee_rot
        self._goal_pos, self._goal_rot = goal, goal_rot
        self._q_des = self.ik.solve(goal, goal_rot, self._q_des, max_iters=cfg.ik_iterations).qpos
        self._gripper_cmd = float(row[6])
        self._apply_ctrl()

    def _run_substeps(self, q_from: np.ndarray, q_to: np.ndarray) -> None:
        """Ramp the arm joint targets from ``q_from`` to ``q_to`` over the control period."""
        n_seg = _RAMP_SEGMENTS
        per_seg, rest = divmod(self.n_substeps, n_seg)
        for k in range(n_seg):
            self.data.ctrl[self.idx.arm_actuators] = q_from + (q_to - q_from) * (k + 1) / n_seg
            mujoco.mj_step(self.model, self.data, nstep=per_seg + (rest if k == n_seg - 1 else 0))

    def _apply_ctrl(self) -> None:
        self.data.ctrl[self.idx.arm_actuators] = self._q_des
        self.data.ctrl[self.idx.finger_actuators] = 0.04 * (1.0 - self._gripper_cmd)

    # ------------------------------------------------------------------ joint-level control
    # Used by the simulated-robot node, which speaks ros2_control-style joint commands instead of
    # Cartesian rows. ``step()`` does not use these and keeps its own goal-pose bookkeeping.
    def set_joint_targets(self, q: np.ndarray, gripper: float) -> None:
        """Hold arm joint targets ``q`` (7, rad; clipped to the joint range) and gripper [0, 1]."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (7,) or not np.all(np.isfinite(q)) or not np.isfinite(gripper):
            raise ValueError(f"joint targets must be 7 finite values and a finite gripper; got {q}")
        self._q_des = np.clip(q, *self.idx.arm_range.T)
        self._gripper_cmd = float(np.clip(gripper, 0.0, 1.0))
        self._apply_ctrl()

    def joint_targets(self) -> tuple[np.ndarray, float]:
        """Currently held arm joint targets (7, rad) and gripper command in [0, 1]."""
        return self._q_des.copy(), self._gripper_cmd

    def advance(self, seconds: float) -> int:
        """Run physics for ``seconds`` (rounded to whole 2 ms steps) holding the current targets.

        Returns the number of physics steps taken. Episode bookkeeping that ``step()`` does per
        control period (highest cube lift for the push detector) is updated here too.
        """
        if not self._reset_called:
            raise RuntimeError("call reset() before advance()")
        n_steps = int(round(max(0.0, seconds) / self.model.opt.timestep))
        if n_steps:
            mujoco.mj_step(self.model, self.data, nstep=n_steps)
            heights = self._cube_positions()[:, 2]
            self._max_cube_height = np.maximum(self._max_cube_height, heights)
        return n_steps

    @property
    def sim_time(self) -> float:
        """Physics time since the last reset, seconds."""
        return float(self.data.time)

    def arm_joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Measured arm joint positions (7, rad) and velocities (7, rad/s)."""
        return (
            self.data.qpos[self.idx.arm_qpos].copy(),
            self.data.qvel[self.idx.arm_dof].copy(),
        )

    def finger_joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Measured finger joint positions (2, m; 0.04 = open) and velocities (2, m/s)."""
        dof = [
            int(self.model.jnt_dofadr[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, n)])
            for n in sc.FINGER_JOINTS
        ]
        return self.data.qpos[self.idx.finger_qpos].copy(), self.data.qvel[dof].copy()

    def object_poses_in_base(self) -> tuple[np.ndarray, np.ndarray]:
        """Cube centres (n, 3, m) and orientations (n, 4, w x y z) in the base frame."""
        _, base_rot = self._base_world()
        base_quat = np.empty(4)
        mujoco.mju_mat2Quat(base_quat, base_rot.reshape(-1))
        base_inv = np.empty(4)
        mujoco.mju_negQuat(base_inv, base_quat)
        quats = np.empty((N_OBJECTS, 4))
        for i, quat in enumerate(self.data.xquat[self.idx.cube_bodies]):
            mujoco.mju_mulQuat(quats[i], base_inv, quat)
        return self._to_base(self._cube_positions()), quats

    def object_dropped(self) -> bool:
        """Whether a cube fell off the table (``step()`` terminates the episode on this)."""
        return bool(np.any(self._cube_positions()[:, 2] < sc.TABLE_TOP_Z - 0.1))

    # ------------------------------------------------------------------ ground truth
    def _ee_world(self) -> tuple[np.ndarray, np.ndarray]:
        site = self.idx.ee_site
        return self.data.site_xpos[site].copy(), self.data.site_xmat[site].reshape(3, 3).copy()

    def _base_world(self) -> tuple[np.ndarray, np.ndarray]:
        body = self.idx.base_body
        return self.data.xpos[body].copy(), self.data.xmat[body].reshape(3, 3).copy()

    def _to_base(self, points: np.ndarray) -> np.ndarray:
        base_pos, base_rot = self._base_world()
        return (np.asarray(points) - base_pos) @ base_rot

    def ee_pose_in_base(self) -> tuple[np.ndarray, np.ndarray]:
        """EE-site pose in the robot base frame (``fr3_link0``): position (m), quat (w,x,y,z)."""
        ee_pos, ee_rot = self._ee_world()
        _, base_rot = self._base_world()
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, (base_rot.T @ ee_rot).reshape(-1))
        return self._to_base(ee_pos), quat

    def ee_velocity_in_base(self) -> np.ndarray:
        """EE-site linear velocity (m/s) in the base frame, from the arm's joint velocities."""
        jacp = np.zeros((3, self.model.nv))
        mujoco.mj_jacSite(self.model, self.data, jacp, None, self.idx.ee_site)
        _, base_rot = self._base_world()
        return base_rot.T @ (jacp @ self.data.qvel)

    def _cube_positions(self) -> np.ndarray:
        return self.data.xpos[self.idx.cube_bodies].copy()

    def object_positions(self) -> dict[str, np.ndarray]:
        """Ground-truth cube centres in the base frame, by colour (for scripted reasoners)."""
        pos = self._to_base(self._cube_positions())
        return {name: pos[i] for i, name in enumerate(sc.OBJECT_NAMES)}

    def target_positions(self) -> dict[str, np.ndarray]:
        """Ground-truth mat centres in the base frame, by colour."""
        pos = self._to_base(self.data.mocap_pos[self.idx.mat_mocap])
        return {name: pos[i] for i, name in enumerate(sc.TARGET_NAMES)}

    def gripper_opening(self) -> float:
        """Finger gap as a fraction of the 8 cm maximum (1 = open)."""
        return float(np.clip(self.data.qpos[self.idx.finger_qpos].sum() / 0.08, 0.0, 1.0))

    def cube_in_fingers(self, obj_index: int) -> bool:
        """Whether both fingers touch the given cube."""
        geom = int(self.idx.cube_geoms[obj_index])
        touched: set[int] = set()
        for con in self.data.contact[: self.data.ncon]:
            g1, g2 = int(con.geom1), int(con.geom2)
            other = g2 if g1 == geom else g1 if g2 == geom else None
            if other is not None and other in self.idx.finger_geoms:
                touched.add(int(self.model.geom_bodyid[other]))
        return len(touched) == 2

    def is_success(self) -> bool:
        """Success detector of the current task (see ``tasks`` module for the definitions)."""
        task = self.task
        i = task.object_index
        cube = self._cube_positions()[i]
        if task.verb == "lift":
            ee_pos, _ = self._ee_world()
            near = float(np.linalg.norm(cube - ee_pos)) < 0.06
            return bool(cube[2] >= LIFT_SUCCESS_HEIGHT and near and self.cube_in_fingers(i))
        mats = self.idx.mat_mocap if task.any_mat else [self.idx.mat_mocap[task.target_index]]
        on_mat = any(
            bool(np.all(np.abs(cube[:2] - self.data.mocap_pos[m][:2]) <= MAT_SUCCESS_HALF))
            for m in mats
        )
        resting = cube[2] < sc.CUBE_HALF_SIZE + 0.005
        if task.verb == "place":
            return on_mat and resting and not self.cube_in_fingers(i)
        never_lifted = self._max_cube_height[i] <= sc.CUBE_HALF_SIZE + PUSH_MAX_LIFT
        return on_mat and resting and bool(never_lifted)

    # ------------------------------------------------------------------ observation
    def _observation(self) -> dict[str, Any]:
        ee_pos, ee_quat = self.ee_pose_in_base()
        _, base_rot = self._base_world()
        ee_rot = base_rot.T @ self._ee_world()[1]
        yaw = yaw_of_rotation(ee_rot)
        cubes = self._to_base(self._cube_positions())
        cube_quats = self.data.xquat[self.idx.cube_bodies].copy()
        cube_yaws = np.array([yaw_of_quaternion(q) for q in cube_quats])
        mats = self._to_base(self.data.mocap_pos[self.idx.mat_mocap])
        joints = self.data.qpos[self.idx.arm_qpos].copy()
        grip = self.gripper_opening()
        velocity = self.ee_velocity_in_base()

        obs: dict[str, Any] = {
            "state": tabletop_state(ee_pos, yaw, grip, joints, cubes, cube_yaws, mats, velocity),
            "ee_pos": ee_pos.astype(np.float32),
            "ee_quat": np.clip(ee_quat, -1.0, 1.0).astype(np.float32),
            "gripper": np.array([grip], dtype=np.float32),
            "joint_pos": np.clip(joints, *(self.idx.arm_range.T + [[-0.05], [0.05]])).astype(
                np.float32
            ),
            "object_pos": np.clip(cubes, -_POSITION_BOUND, _POSITION_BOUND).astype(np.float32),
            "object_quat": np.clip(cube_quats, -1.0, 1.0).astype(np.float32),
            "target_pos": mats.astype(np.float32),
            "instruction": self.instruction,
            "instruction_embedding": np.clip(self.instruction_embedding, -1.0, 1.0),
        }
        if self.config.image_obs:
            obs["image"] = self.render_camera()
        return obs

    def _info(self) -> dict[str, Any]:
        return {
            "task": self.task.name,
            "template_id": self.template_id,
            "instruction": self.instruction,
            "success": self.is_success(),
            "step": self._steps,
        }

    # ------------------------------------------------------------------ rendering
    def render_camera(self, camera: str | None = None) -> np.ndarray:
        """Offscreen RGB frame (H, W, 3) uint8; shadows and reflections are off for speed."""
        if self._renderer is None:
            cfg = self.config
            self._renderer = mujoco.Renderer(self.model, cfg.image_height, cfg.image_width)
            flags = self._renderer.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._renderer.update_scene(self.data, camera=camera or self.config.camera)
        return self._renderer.render().copy()

    # ------------------------------------------------------------------ layout sampling
    def _sample_layout(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Sample mat then cube centres one by one, rejecting overlaps and cubes on mats.

        Mats keep a 2 cm gap (Chebyshev distance >= 0.14 m), cubes sit >= 2 cm clear of every mat
        edge and >= 9 cm from each other.
        """
        low = np.array(self.config.object_region_low)
        high = np.array(self.config.object_region_high)

        def cheb(a: np.ndarray, b: np.ndarray) -> float:
            return float(np.max(np.abs(a - b)))

        for _ in range(100):
            mats: list[np.ndarray] = []
            cubes: list[np.ndarray] = []
            for _ in range(200):
                p = rng.uniform(low, high)
                if len(mats) < N_TARGETS:
                    if all(cheb(p, m) >= 0.14 for m in mats):
                        mats.append(p)
                elif all(cheb(p, m) >= 0.10 for m in mats) and all(
                    np.linalg.norm(p - c) >= 0.09 for c in cubes
                ):
                    cubes.append(p)
                    if len(cubes) == N_OBJECTS:
                        return np.array(cubes), np.array(mats)
        raise RuntimeError("could not sample a non-overlapping layout; widen the region")


def tabletop_state(
    ee_pos: np.ndarray,
    ee_yaw: float,
    gripper_opening: float,
    joint_pos: np.ndarray,
    object_pos: np.ndarray,
    object_yaw: np.ndarray,
    target_pos: np.ndarray,
    ee_velocity: np.ndarray,
) -> np.ndarray:
    """The flat ``state`` vector (``STATE_LAYOUT``) from measurements in the base frame.

    One place for the layout: the environment and the ROS steering node (which measures the
    same quantities from joint states and object ground truth) both build states here; a
    policy takes its prefix (``policy_state``).
    """
    state = np.empty(STATE_DIM, dtype=np.float64)
    lay = STATE_LAYOUT
    object_pos = np.asarray(object_pos, dtype=np.float64).reshape(N_OBJECTS, 3)
    object_yaw = np.asarray(object_yaw, dtype=np.float64).reshape(N_OBJECTS)
    state[lay["ee_pos"]] = ee_pos
    state[lay["ee_yaw"]] = (np.sin(ee_yaw), np.cos(ee_yaw))
    state[lay["gripper"]] = gripper_opening
    state[lay["joint_pos"]] = joint_pos
    state[lay["object_pos"]] = object_pos.reshape(-1)
    state[lay["object_yaw"]] = np.stack(
        [np.sin(4 * object_yaw), np.cos(4 * object_yaw)], axis=1
    ).reshape(-1)
    state[lay["object_rel"]] = (object_pos - np.asarray(ee_pos)).reshape(-1)
    state[lay["target_pos"]] = np.asarray(target_pos, dtype=np.float64).reshape(-1)
    state[lay["ee_velocity"]] = ee_velocity
    return np.clip(state, -_POSITION_BOUND, _POSITION_BOUND).astype(np.float32)


def policy_state(state: np.ndarray, state_dim: int) -> np.ndarray:
    """The part of a tabletop ``state`` (``[..., STATE_DIM]``) a policy of ``state_dim`` reads.

    Positions-only policies (``POSITION_STATE_DIM``) predate the motion features, which is why
    those come last.
    """
    if state_dim not in POLICY_STATE_DIMS:
        raise ValueError(
            f"a tabletop policy reads a {POSITION_STATE_DIM}-d (positions) or {STATE_DIM}-d "
            f"(positions and EE velocity) state, not {state_dim}-d"
        )
    if state.shape[-1] < state_dim:
        raise ValueError(f"a {state_dim}-d policy state cannot come from {state.shape[-1]} floats")
    return state[..., :state_dim]


def _norm_clip(vec: np.ndarray, limit: float) -> np.ndarray:
    norm = float(np.linalg.norm(vec))
    return vec * (limit / norm) if norm > limit else vec.copy()


#: gymnasium id of ``FrankaTabletopEnv``, registered when this module is first imported.
ENV_ID = "FrsTabletop-v0"
if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="frs_sim.env:FrankaTabletopEnv")
