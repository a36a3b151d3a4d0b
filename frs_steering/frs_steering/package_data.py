"""Finding files a package ships (checkpoints, parameter YAML) wherever it is run from.

From a source checkout the files sit next to the package; after an install they sit under
``<prefix>/share/<package>``, found through the ament index when ``AMENT_PREFIX_PATH`` is set
(sourced ROS environments) or under this interpreter's prefix (the project's venv).
"""

from __future__ import annotations

import sys
from pathlib import Path


def find_package_file(package: str, source_root: Path, *parts: str) -> Path:
    """First existing ``parts`` under the source tree, the ament share dir or sys.prefix/share."""
    candidates = [source_root.joinpath(*parts)]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(package)).joinpath(*parts))
    except (ImportError, LookupError, OSError):  # no ament index, or package not in it
        pass
    candidates.append(Path(sys.prefix, "share", package, *parts))
    for path in candidates:
        if path.exists():
            return path
    searched = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"{'/'.join(parts)} of {package} not found (searched {searched})")


#: Checkpoints shipped with frs_steering and the command that rebuilds each.
SHIPPED_CHECKPOINTS = {
    "generalist": "python -m frs_sim.studies.generalist --out frs_steering/checkpoints/generalist",
    "dsbc_novel": "python -m frs_sim.studies.dsbc --out build/dsbc; its build/dsbc/dsbc "
    "(docs/learning.md)",
    "droid_demo": (
        "python -m frs_steering.adapters.droid_demo --out frs_steering/checkpoints/droid_demo"
    ),
}


def shipped_checkpoint(name: str = "generalist") -> Path:
    """A checkpoint shipped with frs_steering (default: the tabletop generalist)."""
    if name not in SHIPPED_CHECKPOINTS:
        raise FileNotFoundError(
            f"no shipped checkpoint {name!r}; shipped: {sorted(SHIPPED_CHECKPOINTS)}"
        )
    try:
        return find_package_file(
            "frs_steering", Path(__file__).resolve().parents[1], "checkpoints", name
        )
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}; build it with `{SHIPPED_CHECKPOINTS[name]}`") from None


def resolve_checkpoint(value: str) -> Path:
    """A checkpoint parameter's directory: "" = the generalist, a shipped name, or a path."""
    if not value:
        return shipped_checkpoint()
    if value in SHIPPED_CHECKPOINTS:
        return shipped_checkpoint(value)
    return Path(value)
