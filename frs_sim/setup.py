"""ament_python package definition for frs_sim."""

from setuptools import find_packages, setup

PACKAGE = "frs_sim"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="FRS-ROS developers",
    maintainer_email="frs-ros@example.org",
    description=(
        "The simulated Franka tabletop (MuJoCo): scene, tasks, experts, scripted reasoner, the "
        "sim_robot node, the benchmark evaluation and the generalist / DSBC / DSRL studies."
    ),
    license="Apache-2.0",
    entry_points={"console_scripts": ["sim_robot = frs_sim.sim_robot_node:main"]},
)
