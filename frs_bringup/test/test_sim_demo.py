"""`sim_demo --one-process`: every node of the stack composed in this one process still runs
episodes end to end (the default demo, one process per node, is exercised by test_bags)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from frs_bringup.sim_demo import default_params_file
from frs_bringup.testing import RigClient

pytestmark = pytest.mark.flaky(reruns=2)


def test_one_process_demo_runs_episodes(tmp_path: Path, rclpy_context) -> None:  # noqa: ANN001
    params = yaml.safe_load(default_params_file().read_text())
    params["sim_robot"]["ros__parameters"]["max_episode_time"] = 4.0
    params["episode_runner"]["ros__parameters"]["episode_timeout"] = 12.0
    params["episode_runner"]["ros__parameters"]["tasks"] = ["push_blue_white"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rig = RigClient(rclpy_context)  # records the composed controller's velocity commands
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "frs_bringup.sim_demo",
            "--one-process",
            "--params-file",
            str(tmp_path / "params.yaml"),
            "--episodes",
            "2",
            "--seed",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert rig.spin_until(lambda: process.poll() is not None, 180.0), "demo did not finish"
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        rig.destroy()
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    episodes = re.findall(
        r"^episode\s+\d+\s+push_blue_white\s+seed\s+\d+\s+\w+\s+steps\s+(\d+).*\((\w[\w ]*)\)",
        done.stdout,
        re.M,
    )
    assert len(episodes) == 2, done.stdout[-3000:]
    # Each episode ran on the simulated clock to a verdict: the composed stack stepped physics
    # and reported status (a stalled stack ends with "no status received" / "runner timeout").
    for steps, reason in episodes:
        assert reason in ("success", "timeout"), done.stdout[-3000:]
        assert int(steps) > 0
    assert "simulated demo: success" in done.stdout
    # A chunk left running while the next is planned still has its result coming: the
    # proposer keeps the request (dropping it made rclpy warn at every such chunk).
    assert "Ignoring unexpected result" not in done.stdout + done.stderr, done.stderr[-3000:]
    # Refined chunks were executed: the composed controller drove the arm.
    speeds = [np.abs(np.asarray(m.data)).max() for m in rig.velocity_commands.messages]
    assert max(speeds, default=0.0) > 1e-3, "the composed stack never drove the arm"


def _demo(tmp_path: Path, edit, *extra: str, timeout: float = 180.0):  # noqa: ANN001, ANN202
    """Run ``sim_demo`` (one process per node) on the sim YAML changed by ``edit``; stdout and
    stderr merged in the order they were written."""
    params = yaml.safe_load(default_params_file().read_text())
    edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "frs_bringup.sim_demo",
            "--params-file",
            str(tmp_path / "params.yaml"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_demo_stops_cleanly_with_a_goal_in_flight(tmp_path: Path) -> None:
    """The runner gives up mid-episode while steering is busy (1000-step goals, feedback at
    every step): sim_demo lets the goals end and deactivates each lifecycle node before
    stopping its process, so the stop logs no error and no failed publish."""

    def edit(params: dict) -> None:
        params["sim_robot"]["ros__parameters"]["max_episode_time"] = 12.0
        params["episode_runner"]["ros__parameters"]["episode_timeout"] = 3.0
        params["episode_runner"]["ros__parameters"]["tasks"] = ["push_blue_white"]
        params["proposer"]["ros__parameters"]["num_steps"] = 1000
        params["steering"]["ros__parameters"]["feedback_period"] = 0.0

    done = _demo(tmp_path, edit, "--episodes", "1")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "runner timeout" in done.stdout, done.stdout[-3000:]
    stop = done.stdout[done.stdout.index("success 0/1") :]  # the runner's summary, then the stop
    assert "simulated demo: success 0/1" in stop
    # What a stop under running goals logged before: the steering worker publishing feedback
    # on a destroyed action server, a proposer's goal cut off by its context going, rosout
    # publishers of shut-down contexts. (A late 1000-step chunk may still be refused as stale.)
    bad = re.compile(
        r"\[(ERROR|FATAL)\]|\[WARN\].*\[(steering|proposer)\]|Traceback|Failed to publish"
        r"|invalid|not accepted|\[sim_demo\]"
    )
    # The 1000-step goals can outlast the proposer's own steering timeout while the stop drains
    # them: that warning is the goal's length, not the stop.
    stop = "\n".join(line for line in stop.splitlines() if "steering timed out after" not in line)
    assert not bad.search(stop), stop


def test_demo_names_a_node_that_fails_to_come_up(tmp_path: Path) -> None:
    """A lifecycle node that cannot configure stops the demo with its name, and the nodes
    started so far are stopped (the run ends instead of waiting for a stack that never serves)."""

    def edit(params: dict) -> None:
        params["steering"]["ros__parameters"]["checkpoint"] = str(tmp_path / "no_checkpoint")

    done = _demo(tmp_path, edit, "--episodes", "1", timeout=120.0)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "[sim_demo] steering did not become inactive" in done.stdout, done.stdout[-3000:]
    assert "simulated demo: no episodes ran" in done.stdout
    assert "episode   1" not in done.stdout


def _processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text`` (from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def test_nodes_do_not_outlive_a_killed_demo(tmp_path: Path) -> None:
    """sim_demo SIGKILLed (e.g. by a timeout) takes its node processes with it."""
    params = tmp_path / "params.yaml"
    params.write_text(default_params_file().read_text())
    demo = subprocess.Popen(
        [sys.executable, "-m", "frs_bringup.sim_demo", "--params-file", str(params)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60.0
        while len(_processes_mentioning(str(params))) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)  # sim_demo and its four nodes
        assert len(_processes_mentioning(str(params))) >= 5, "the stack did not start"
    finally:
        demo.kill()
        demo.wait(timeout=10)
    deadline = time.monotonic() + 20.0
    while _processes_mentioning(str(params)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _processes_mentioning(str(params))
    for pid in left:  # do not leave them to the next test either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"node processes outlived sim_demo: {left}"


def test_the_demo_waits_for_the_recorder_and_names_a_recorder_that_died(
    rclpy_context,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """Episodes start only once the real recorder reports that it records what a replay needs:
    a sample of joint_states and of each stream the steering node observes, and a publisher of
    the steering records (a recorder slower to start than the stack was stopped before it wrote
    any bag; one whose joint_states reader matched late lost the first chunks' observations)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import JointState

    from frs_bringup.bag_replay import RECORD_TOPIC
    from frs_bringup.sim_demo import wait_for_recorder
    from frs_msgs.msg import ObjectStates, SteeringRecord

    demo = rclpy.create_node("demo_under_test", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(demo)
    recorder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "frs_bringup.recorder",
            "--out",
            str(tmp_path / "bag"),
            "--params-file",
            str(default_params_file()),
        ]
    )
    try:
        with pytest.raises(RuntimeError, match="did not report recording"):
            wait_for_recorder(demo, executor, recorder, timeout_s=5.0)  # no data, no records
        demo.create_publisher(SteeringRecord, RECORD_TOPIC, 10)
        with pytest.raises(RuntimeError, match="did not report recording"):
            wait_for_recorder(demo, executor, recorder, timeout_s=3.0)  # still no observations
        joints = demo.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        objects = demo.create_publisher(ObjectStates, "frs/object_states", qos_profile_sensor_data)

        def publish_observation() -> None:
            joints.publish(JointState())
            objects.publish(ObjectStates())

        demo.create_timer(0.05, publish_observation)
        wait_for_recorder(demo, executor, recorder, timeout_s=60.0)  # returns once recording
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=30)
    assert recorder.returncode == 0
    died = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    died.wait()
    with pytest.raises(RuntimeError, match="recorder exited with 3"):
        wait_for_recorder(demo, executor, died, timeout_s=30.0)
    demo.destroy_node()


def test_eval_seed_runs_the_benchmarks_episodes(tmp_path: Path) -> None:
    """``--eval-seed S --episodes 18`` gives the episode runner exactly the (task, scene seed)
    pairs ``frs_sim.evaluate --seeds S --episodes-per-task 3`` runs, so the closed loop through
    ROS and the pure simulation can be compared episode by episode."""
    from frs_bringup.sim_demo import benchmark_episodes
    from frs_sim.evaluate.rollout import Setting, make_jobs

    params = yaml.safe_load(default_params_file().read_text())
    params["sim_robot"]["ros__parameters"]["split"] = "novel"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    values = {p.name: p.value for p in benchmark_episodes(tmp_path / "params.yaml", 2, 18)}
    jobs = make_jobs([Setting("frs", split="novel")], 3, [2])
    assert values["episodes"] == 18
    assert sorted(zip(values["tasks"], values["seeds"], strict=True)) == sorted(
        (task.name, seed) for _, task, seed in jobs
    )
    assert len(set(values["seeds"])) == 18
