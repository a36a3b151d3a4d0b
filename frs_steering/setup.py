"""ament_python package definition for frs_steering."""

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "frs_steering"


def tree_data_files(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries installing every file under ``folder`` to share/<pkg>/<folder>."""
    entries: dict[str, list[str]] = {}
    for path in sorted(glob(f"{folder}/**/*", recursive=True)):
        if os.path.isfile(path):
            entries.setdefault(os.path.join("share", PACKAGE, os.path.dirname(path)), []).append(
                path
            )
    return list(entries.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        *tree_data_files("checkpoints"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="FRS-ROS developers",
    maintainer_email="frs-ros@example.org",
    description=(
        "Flow Reversal Steering: flow-policy contract, reversible ODE integration, FRS and "
        "baselines, built-in flow policy, noise-space learning, and the steering node."
    ),
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "steering = frs_steering.steering_node:main",
        ]
    },
)
