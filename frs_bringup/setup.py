"""ament_python package definition for frs_bringup."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "frs_bringup"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.launch.py")),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        ("share/" + PACKAGE + "/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="FRS-ROS developers",
    maintainer_email="frs-ros@example.org",
    description=(
        "Launch files, the stack definition and parameter YAML, rviz configuration, the "
        "simulated demo and episode runner, and rosbag record/replay evaluation for FRS-ROS."
    ),
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "episode_runner = frs_bringup.episode_runner:main",
            "sim_demo = frs_bringup.sim_demo:main",
            "frs_record = frs_bringup.recorder:main",
            "frs_bag_replay = frs_bringup.bag_replay:main",
            "frs_bag_noise = frs_bringup.bag_noise:main",
        ]
    },
)
