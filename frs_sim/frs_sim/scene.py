"""MuJoCo scene for the tabletop benchmark: Panda on a table, coloured cubes and flat target mats.

The Panda meshes and kinematic chain are read at run time from the installed
``gymnasium_robotics`` package (``envs/assets/kitchen_franka/franka_assets``); nothing of it is
copied into this repository. The scene XML below only *includes* those files by absolute path and
adds the table, objects, targets and the exterior cameras. Through ``MjSpec`` the wrist camera
is then attached to the hand and a few model parameters are adjusted (gravity compensation on
the arm, lighter joint damping) so the position servos track IK targets within one 0.1 s control
period.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

#: Cube colours (RGBA) in the fixed order used by every observation and state vector.
OBJECT_COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.10, 1.0),
    "green": (0.10, 0.70, 0.20, 1.0),
    "blue": (0.12, 0.25, 0.90, 1.0),
}
#: Target mat colours (RGBA) in the fixed order used by every observation and state vector.
TARGET_COLORS: dict[str, tuple[float, float, float, float]] = {
    "yellow": (0.95, 0.85, 0.10, 1.0),
    "purple": (0.55, 0.20, 0.75, 1.0),
    "white": (0.95, 0.95, 0.95, 1.0),
}
OBJECT_NAMES: tuple[str, ...] = tuple(OBJECT_COLORS)
TARGET_NAMES: tuple[str, ...] = tuple(TARGET_COLORS)

CUBE_HALF_SIZE = 0.02  # metres; 4 cm cubes fit the 8 cm Panda gripper
MAT_HALF_SIZE = 0.06  # metres; 12 cm square flat target mats
TABLE_TOP_Z = 0.0  # the robot base (fr3_link0) stands on the table top at the world origin

ARM_JOINTS: tuple[str, ...] = tuple(f"robot:panda0_joint{i}" for i in range(1, 8))
FINGER_JOINTS: tuple[str, str] = ("robot:panda0_finger_joint1", "robot:panda0_finger_joint2")
BASE_BODY = "panda0_link0"  # the robot base; the ROS side names this frame ``fr3_link0``
EE_SITE = "end_effector"  # between the finger pads; the ROS side names this ``fr3_hand_tcp``
FINGER_BODIES: tuple[str, str] = ("panda0_leftfinger", "panda0_rightfinger")
#: Rendered cameras: two exterior ones in the world (a DROID rig's two side cameras) and ``wrist``
#: on the Panda hand. Cameras carry no mass and take part in no contact: physics is unchanged.
CAMERA_NAMES: tuple[str, ...] = ("front", "top", "wrist")
HAND_BODY = "panda0_link7"  # carries the hand meshes; its z axis points along the fingers
#: Wrist camera in the hand frame: on the robot side of the hand, looking down the fingers and
#: tilted toward them; the fingers show at the bottom of the image, as on a DROID wrist camera.
_WRIST_OFFSET = (-0.09, 0.0, 0.07)  # metres, in the EE-aligned hand frame (x, y, along fingers)
_WRIST_TILT = np.radians(20.0)  # toward the fingertips
_WRIST_FOVY = 75.0  # degrees

# Servo retuning (the shipped gains lag ~0.12 s behind a 10 Hz command): stiffer position gains,
# light joint damping, and a lighter finger armature so the gripper closes in ~0.15 s.
_ARM_KP = (2000.0, 2000.0, 2000.0, 2000.0, 400.0, 400.0, 400.0)  # N m/rad
_ARM_DAMPING = (32.0, 32.0, 32.0, 32.0, 3.5, 3.5, 3.5)  # N m s/rad
_ARM_FORCE_LIMIT = (87.0, 87.0, 87.0, 87.0, 24.0, 24.0, 24.0)  # N m
_FINGER_DAMPING = 30.0  # N s/m
_FINGER_ARMATURE = 0.5  # kg


def franka_assets_dir() -> Path:
    """Return the installed gymnasium-robotics Franka asset folder (raises if it is missing)."""
    spec = importlib.util.find_spec("gymnasium_robotics")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "gymnasium-robotics is not installed; it provides the Panda model "
            "(envs/assets/kitchen_franka/franka_assets)"
        )
    path = Path(spec.origin).parent / "envs" / "assets" / "kitchen_franka" / "franka_assets"
    if not (path / "chain.xml").is_file():
        raise FileNotFoundError(f"Panda model files not found under {path}")
    return path


def _rgba(color: tuple[float, float, float, float]) -> str:
    return " ".join(f"{c:g}" for c in color)


def scene_xml(render_width: int = 128, render_height: int = 128) -> str:
    """Build the MJCF text of the scene, including the Panda files by absolute path."""
    assets = franka_assets_dir()
    off_w, off_h = max(640, render_width), max(480, render_height)
    cube_size = f"{CUBE_HALF_SIZE} {CUBE_HALF_SIZE} {CUBE_HALF_SIZE}"
    mat_size = f"{MAT_HALF_SIZE} {MAT_HALF_SIZE} 0.0005"
    materials = "\n".join(
        f'    <material name="{prefix}_{name}" rgba="{_rgba(rgba)}" specular="0.05" '
        'shininess="0.1"/>'
        for prefix, colors in (("cube", OBJECT_COLORS), ("mat", TARGET_COLORS))
        for name, rgba in colors.items()
    )
    cubes = "\n".join(
        f"""    <body name="cube_{name}" pos="{0.4 + 0.1 * i} 0 {CUBE_HALF_SIZE}">
      <freejoint name="cube_{name}_joint"/>
      <geom name="cube_{name}_geom" type="box" size="{cube_size}" material="cube_{name}"
            mass="0.08" friction="1.0 0.01 0.001" condim="4"/>
    </body>"""
        for i, (name, rgba) in enumerate(OBJECT_COLORS.items())
    )
    mats = "\n".join(
        f"""    <body name="mat_{name}" mocap="true" pos="{0.4 + 0.1 * i} 0.3 0.0006">
      <geom name="mat_{name}_geom" type="box" size="{mat_size}" material="mat_{name}"
            contype="0" conaffinity="0"/>
    </body>"""
        for i, (name, rgba) in enumerate(TARGET_COLORS.items())
    )
    return f"""<mujoco model="frs_tabletop">
  <include file="{assets / "assets.xml"}"/>
  <include file="{assets / "actuator.xml"}"/>
  <compiler angle="radian" meshdir="{assets / "meshes"}"/>
  <option timestep="0.002" integrator="implicitfast"/>
  <visual>
    <global offwidth="{off_w}" offheight="{off_h}"/>
    <quality shadowsize="0"/>
    <headlight ambient="0.3 0.3 0.3" diffuse="0.3 0.3 0.3" specular="0.05 0.05 0.05"/>
  </visual>

  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.55 0.6 0.7" rgb2="0.2 0.2 0.25"
             width="64" height="64"/>
    <material name="table" rgba="0.32 0.30 0.28 1" specular="0.05" shininess="0.1"/>
{materials}
  </asset>
  <worldbody>
    <light name="key" directional="true" pos="1 0 2" dir="-0.4 0 -1" castshadow="false"
           diffuse="0.45 0.45 0.45" specular="0.1 0.1 0.1"/>
    <geom name="table" type="box" pos="0.35 0 {TABLE_TOP_Z - 0.02}" size="0.6 0.6 0.02"
          material="table" friction="0.6 0.005 0.0001"/>
    <camera name="front" pos="1.25 0 0.75" xyaxes="0 1 0 -0.55 0 0.83" fovy="50"/>
    <camera name="top" pos="0.5 0 1.2" xyaxes="0 1 0 -1 0 0" fovy="45"/>
    <body name="robot_base" pos="0 0 {TABLE_TOP_Z}">
      <include file="{assets / "chain.xml"}"/>
    </body>
{cubes}
{mats}
  </worldbody>
</mujoco>
"""


@dataclass(frozen=True)
class SceneIndex:
    """Ids and address slices into ``MjModel``/``MjData`` arrays, resolved once per model."""

    arm_qpos: np.ndarray  # (7,) qpos addresses of the arm joints
    arm_dof: np.ndarray  # (7,) dof addresses of the arm joints
    finger_qpos: np.ndarray  # (2,) qpos addresses of the finger joints
    arm_actuators: np.ndarray  # (7,) actuator ids driving the arm joints
    finger_actuators: np.ndarray  # (2,) actuator ids driving the fingers
    arm_range: np.ndarray  # (7, 2) joint limits, radians
    ee_site: int
    base_body: int
    cube_bodies: np.ndarray  # (n_objects,) body ids in OBJECT_NAMES order
    cube_qpos: np.ndarray  # (n_objects,) first qpos address of each cube's free joint
    cube_dof: np.ndarray  # (n_objects,) first dof address of each cube's free joint
    cube_geoms: np.ndarray  # (n_objects,) geom ids
    mat_mocap: np.ndarray  # (n_targets,) mocap ids in TARGET_NAMES order
    finger_geoms: frozenset[int]  # geoms on the two finger bodies (contact tests)
    table_geom: int


def _id(model: mujoco.MjModel, obj: mujoco.mjtObj, name: str) -> int:
    idx = mujoco.mj_name2id(model, obj, name)
    if idx < 0:
        raise KeyError(f"{name!r} not found in the scene model")
    return idx


def build_model(render_width: int = 128, render_height: int = 128) -> mujoco.MjModel:
    """Compile the scene with gravity compensation on the arm and faster servo damping."""
    spec = mujoco.MjSpec.from_string(scene_xml(render_width, render_height))
    for body in spec.bodies:
        if body.name.startswith("panda0_"):
            body.gravcomp = 1.0
    for joint in spec.joints:
        if joint.name in ARM_JOINTS:
            joint.damping[0] = _ARM_DAMPING[ARM_JOINTS.index(joint.name)]
        elif joint.name in FINGER_JOINTS:
            joint.damping[0] = _FINGER_DAMPING
            joint.armature = _FINGER_ARMATURE
    for actuator in spec.actuators:
        if actuator.target in ARM_JOINTS:
            i = ARM_JOINTS.index(actuator.target)
            actuator.gainprm[0] = _ARM_KP[i]
            actuator.biasprm[1] = -_ARM_KP[i]
            actuator.forcerange = [-_ARM_FORCE_LIMIT[i], _ARM_FORCE_LIMIT[i]]
    _add_wrist_camera(spec)
    return spec.compile()


def _add_wrist_camera(spec: mujoco.MjSpec) -> None:
    """Attach the ``wrist`` camera to the hand (rendering only: no mass, no geometry)."""
    # The EE site is the hand frame turned -45 deg about its z axis (see chain.xml).
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    ex, ey, ez = np.array([c, -s, 0.0]), np.array([c, s, 0.0]), np.array([0.0, 0.0, 1.0])
    cos_t, sin_t = np.cos(_WRIST_TILT), np.sin(_WRIST_TILT)
    x_cam = -ey
    y_cam = sin_t * ez - cos_t * ex  # image up: toward the robot, fingers at the bottom
    z_cam = -sin_t * ex - cos_t * ez  # MuJoCo cameras look along -z
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.column_stack([x_cam, y_cam, z_cam]).reshape(-1))
    offset = np.asarray(_WRIST_OFFSET)
    spec.body(HAND_BODY).add_camera(
        name="wrist",
        pos=offset[0] * ex + offset[1] * ey + offset[2] * ez,
        quat=quat,
        fovy=_WRIST_FOVY,
    )


def index_scene(model: mujoco.MjModel) -> SceneIndex:
    """Resolve every id the environment needs from names (fails loudly on a renamed asset)."""
    joint = mujoco.mjtObj.mjOBJ_JOINT
    arm_j = [_id(model, joint, n) for n in ARM_JOINTS]
    fing_j = [_id(model, joint, n) for n in FINGER_JOINTS]
    act_by_joint = {int(model.actuator_trnid[a, 0]): a for a in range(model.nu)}
    cube_b = [_id(model, mujoco.mjtObj.mjOBJ_BODY, f"cube_{n}") for n in OBJECT_NAMES]
    cube_j = [_id(model, joint, f"cube_{n}_joint") for n in OBJECT_NAMES]
    finger_b = {_id(model, mujoco.mjtObj.mjOBJ_BODY, n) for n in FINGER_BODIES}
    finger_g = frozenset(g for g in range(model.ngeom) if int(model.geom_bodyid[g]) in finger_b)
    mats = [
        int(model.body_mocapid[_id(model, mujoco.mjtObj.mjOBJ_BODY, f"mat_{n}")])
        for n in TARGET_NAMES
    ]
    return SceneIndex(
        arm_qpos=np.array([model.jnt_qposadr[j] for j in arm_j]),
        arm_dof=np.array([model.jnt_dofadr[j] for j in arm_j]),
        finger_qpos=np.array([model.jnt_qposadr[j] for j in fing_j]),
        arm_actuators=np.array([act_by_joint[j] for j in arm_j]),
        finger_actuators=np.array([act_by_joint[j] for j in fing_j]),
        arm_range=np.array([model.jnt_range[j] for j in arm_j]),
        ee_site=_id(model, mujoco.mjtObj.mjOBJ_SITE, EE_SITE),
        base_body=_id(model, mujoco.mjtObj.mjOBJ_BODY, BASE_BODY),
        cube_bodies=np.array(cube_b),
        cube_qpos=np.array([model.jnt_qposadr[j] for j in cube_j]),
        cube_dof=np.array([model.jnt_dofadr[j] for j in cube_j]),
        cube_geoms=np.array(
            [_id(model, mujoco.mjtObj.mjOBJ_GEOM, f"cube_{n}_geom") for n in OBJECT_NAMES]
        ),
        mat_mocap=np.array(mats),
        finger_geoms=finger_g,
        table_geom=_id(model, mujoco.mjtObj.mjOBJ_GEOM, "table"),
    )
