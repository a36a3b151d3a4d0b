"""ament_python package definition for frs_vlm_bridge."""

from setuptools import find_packages, setup

PACKAGE = "frs_vlm_bridge"

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
        "Coarse-action proposer node and its reasoner backends: a VLM over an OpenAI-"
        "compatible HTTP API, human directions from rviz and topics, and a scripted "
        "reasoner for the simulator."
    ),
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "proposer = frs_vlm_bridge.proposer_node:main",
        ]
    },
)
