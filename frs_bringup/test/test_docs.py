"""The node parameter tables in docs/nodes.md are the parameters the nodes declare."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_parameter_tables_match_the_nodes() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "param_tables.py"),
            "--check",
            "docs/nodes.md",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
