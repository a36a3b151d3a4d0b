"""Package import cost and gymnasium registration, each in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_scene_and_tasks_skips_gymnasium_and_torch_and_defaults_egl() -> None:
    out = _run(
        "import os, sys\n"
        "import frs_sim.scene, frs_sim.tasks\n"
        "heavy = sorted(m for m in ('gymnasium', 'torch', 'frs_sim.env') if m in sys.modules)\n"
        "print(os.environ['MUJOCO_GL'], heavy, 'mujoco' in sys.modules)\n"
    )
    assert out == "egl [] True"


def test_env_registers_with_gymnasium_on_first_use() -> None:
    out = _run(
        "import gymnasium as gym\n"
        "import frs_sim\n"
        "env = gym.make(frs_sim.ENV_ID)\n"
        "print(type(env.unwrapped).__name__, frs_sim.FrankaTabletopEnv is type(env.unwrapped))\n"
        "env.close()\n"
    )
    assert out == "FrankaTabletopEnv True"
