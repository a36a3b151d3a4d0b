"""Arm-side half of FRS-ROS: chunk execution, limits, watchdog, gripper outputs, arm kinematics.

Runs on the robot PC: numpy and rclpy only (no torch, no simulator).
"""
