#!/usr/bin/env bash
# Source ROS 2 and the FRS-ROS workspace, then run the given command.
set -e
. /opt/ros/jazzy/setup.bash
. /ws/install/setup.bash
exec "$@"
