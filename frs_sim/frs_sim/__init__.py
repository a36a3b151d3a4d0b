"""Simulated Franka tabletop benchmark (pure Python, no ROS): scene, env, tasks, experts, demos.

``FrankaTabletopEnv`` is also registered with gymnasium as ``FrsTabletop-v0``.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported anywhere below

import gymnasium as _gym  # noqa: E402

from frs_sim.env import (  # noqa: E402
    ACTION_DIM,
    ACTION_REAL_DIM,
    CHUNK_HORIZON,
    STATE_DIM,
    STATE_LAYOUT,
    ChunkRollout,
    EnvConfig,
    FrankaTabletopEnv,
)
from frs_sim.experts import ScriptedExpert, run_expert_episode  # noqa: E402
from frs_sim.tasks import (  # noqa: E402
    NOVEL_PAIRS,
    SPLITS,
    TEMPLATES,
    TaskSpec,
    all_tasks,
    find_task,
    get_split,
)
from frs_steering.instructions import (  # noqa: E402
    EMBEDDING_DIM,
    InstructionEncoder,
    InstructionModelMissing,
    embed_instruction,
)

ENV_ID = "FrsTabletop-v0"
if ENV_ID not in _gym.registry:
    _gym.register(id=ENV_ID, entry_point="frs_sim.env:FrankaTabletopEnv")

__all__ = [
    "ACTION_DIM",
    "ACTION_REAL_DIM",
    "CHUNK_HORIZON",
    "EMBEDDING_DIM",
    "ENV_ID",
    "NOVEL_PAIRS",
    "SPLITS",
    "STATE_DIM",
    "STATE_LAYOUT",
    "TEMPLATES",
    "ChunkRollout",
    "EnvConfig",
    "FrankaTabletopEnv",
    "InstructionEncoder",
    "InstructionModelMissing",
    "ScriptedExpert",
    "TaskSpec",
    "all_tasks",
    "embed_instruction",
    "find_task",
    "get_split",
    "run_expert_episode",
]
