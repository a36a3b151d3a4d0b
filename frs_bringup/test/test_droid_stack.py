"""The droid configuration end to end, nodes in separate processes, switched by YAML only.

``sim_demo --stack droid`` starts the same node code as the tabletop stack with
``config/droid.yaml``: the simulated Panda publishes three cameras as ``sensor_msgs/Image``
topics, the steering node reads them, the joints and the gripper through the ``droid``
observation adapter and serves 15 Hz joint-velocity chunks of the shipped ``droid_demo`` policy
through ``SteerChunk``, and the arm controller streams them as velocity commands. The session is
recorded (cameras included) and replayed offline with the same adapter: the logged chunks come
back to float tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from frs_bringup.bags import typestore
from frs_bringup.stacks import get_stack, params_path
from frs_bringup.testing import RigClient
from frs_control.execution import FR3_JOINT_VELOCITY

pytestmark = pytest.mark.flaky(reruns=1)


def test_droid_stack_steers_cameras_into_joint_velocities(tmp_path: Path, rclpy_context) -> None:  # noqa: ANN001
    bag = tmp_path / "droid_session"
    rig = RigClient(rclpy_context)  # records the controller's velocity commands
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "frs_bringup.sim_demo",
            "--stack",
            "droid",
            "--episodes",
            "1",
            "--record",
            str(bag),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert rig.spin_until(lambda: process.poll() is not None, 180.0), "demo did not finish"
        output = process.communicate(timeout=10)[0]
    finally:
        if process.poll() is None:
            process.kill()
        rig.destroy()
    assert process.returncode == 0, output[-4000:]
    assert "adapter droid (joint_velocity)" in output, output[-4000:]
    assert "[ERROR]" not in output, output[-4000:]

    # The controller streamed the policy's joint velocities, finite and within the FR3 limits.
    commands = np.array([m.data for m in rig.velocity_commands.messages], dtype=float)
    assert commands.ndim == 2 and commands.shape[1] == 7, commands.shape
    assert np.isfinite(commands).all()
    assert (np.abs(commands) <= np.asarray(FR3_JOINT_VELOCITY) + 1e-9).all()
    assert np.abs(commands).max() > 1e-3, "the droid stack never drove the arm"

    # What the steering node served: 15 Hz joint-velocity chunks computed from the cameras.
    store = typestore()
    with Reader(bag) as reader:
        topics = {c.topic.strip("/"): c for c in reader.connections}
        for camera in ("front", "top", "wrist"):
            assert topics[f"{camera}/image_raw"].msgcount > 10, f"{camera} images not recorded"
        records = [
            store.deserialize_cdr(raw, conn.msgtype)
            for conn, _, raw in reader.messages(connections=[topics["frs/steering/record"]])
        ]
    assert len(records) >= 3, f"only {len(records)} chunks served"
    for record in records:
        refined = record.refined
        assert refined.action_space == "joint_velocity" and refined.dt == pytest.approx(1 / 15)
        assert (refined.horizon, refined.dim) == (15, 8)
        rows = np.asarray(refined.data, dtype=float).reshape(15, 8)
        assert np.isfinite(rows).all() and (rows[:, 7] >= 0).all() and (rows[:, 7] <= 1).all()
        assert record.scene_stamp.sec or record.scene_stamp.nanosec  # an image was matched

    # Offline, the same adapter rebuilds the inputs from the bag: logged chunks come back.
    out = tmp_path / "replay"
    replay = subprocess.run(
        [
            sys.executable,
            "-m",
            "frs_bringup.bag_replay",
            "--bag",
            str(bag),
            "--out",
            str(out),
            "--methods",
            "logged",
            "--params-file",
            str(params_path(get_stack("droid"))),
            "--no-bag",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert replay.returncode == 0, replay.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    (logged,) = metrics["methods"]
    assert logged["chunks"] >= 3 and metrics["checkpoint_matches"], metrics
    assert logged["max_abs_error"] < 1e-5, logged
