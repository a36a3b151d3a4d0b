"""ament_python package definition for frs_control."""

from setuptools import find_packages, setup

PACKAGE = "frs_control"

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
        "The arm controller node: timestamped chunk execution, joint/velocity/workspace limits, "
        "watchdog, e-stop, gripper outputs and the arm's kinematics; numpy only."
    ),
    license="Apache-2.0",
    entry_points={"console_scripts": ["arm_controller = frs_control.arm_controller_node:main"]},
)
