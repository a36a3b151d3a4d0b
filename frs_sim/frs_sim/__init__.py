"""Simulated Franka tabletop benchmark (pure Python, no ROS): scene, env, tasks, experts, demos.

Importing the package is cheap: submodules such as ``frs_sim.scene`` or ``frs_sim.tasks`` load
without gymnasium or torch. The names below
resolve on first use; ``FrankaTabletopEnv`` registers with gymnasium as ``FrsTabletop-v0`` when
``frs_sim.env`` is imported.
"""

import importlib
import os

# Offscreen rendering without a display; must be set before mujoco is first imported, which any
# submodule import does after this package's __init__ has run.
os.environ.setdefault("MUJOCO_GL", "egl")

#: public name -> the submodule that defines it (imported on first attribute access)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "ACTION_DIM",
            "ACTION_REAL_DIM",
            "CHUNK_HORIZON",
            "ENV_ID",
            "STATE_DIM",
            "STATE_LAYOUT",
            "ChunkRollout",
            "EnvConfig",
            "FrankaTabletopEnv",
        ),
        "env",
    ),
    **dict.fromkeys(("ScriptedExpert", "run_expert_episode"), "experts"),
    **dict.fromkeys(
        ("NOVEL_PAIRS", "SPLITS", "TEMPLATES", "TaskSpec", "all_tasks", "find_task", "get_split"),
        "tasks",
    ),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    """Resolve a public name from its submodule on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'frs_sim' has no attribute {name!r}")
    return getattr(importlib.import_module(f"frs_sim.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
