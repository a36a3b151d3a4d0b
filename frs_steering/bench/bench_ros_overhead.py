"""What ROS adds to a steering call, and how long from an observation to the arm's first command.

Starts the steering node and a minimal rclpy action server, each in its own process over Fast
DDS on localhost. Per chunk it publishes ``joint_states`` + ``frs/object_states`` with a fresh
stamp, then runs, in alternating order:

- in-process: the node's own work on the same messages without ROS (the tabletop adapter's
  parsing and observation, the layout's reference, ``steer`` with the unsteered sample, as the
  node's defaults do), timed from the stamp;
- over ROS: a ``SteerChunk`` goal for that stamp, timed from the stamp to the refined chunk;

so both see the same machine load and the per-chunk difference is the ROS overhead. Right
after each ROS call it times an empty goal against the minimal server (no parameter services,
returns at once): rclpy's own floor on this machine at that moment. The target (issue 14):
median overhead <= median floor + 2 ms; the bench prints both, their paired per-chunk difference
and the verdict.

Two phases in one run. **Policy host**: only the steering node (and the floor server) run
beside the bench, as on the rig's policy host. **With the arm controller** (skipped with
``--no-first-command``): the arm controller starts too, on the same cores (on the rig it runs on
the robot PC), each refined chunk goes to it (``joint_trajectory`` output, one message per
chunk), and the time from the observation stamp to that command is recorded; the overhead is
measured again under that load. Prints medians and percentiles, writes ``results.json`` (with
the per-chunk pairs) and ``latency.png`` to ``--out``. Not a test.

    .venv/bin/python frs_steering/bench/bench_ros_overhead.py
        [--chunks 200] [--feedback/--no-feedback] [--markers/--no-markers]
        [--first-command/--no-first-command] [--param NAME:=VALUE ...] [--out DIR]
"""

# ruff: noqa: E402 - the imports below come after the source roots are put on the path
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: This checkout's package folders: first on the path of this process and of the node processes
#: it starts, so the bench measures the code in the tree, not the copy installed in the venv.
REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = [
    str(REPO_ROOT / name)
    for name in ("frs_control", "frs_steering", "frs_vlm_bridge", "frs_sim", "frs_bringup")
]
sys.path[:0] = SOURCE_ROOTS
os.environ["PYTHONPATH"] = os.pathsep.join(
    [*SOURCE_ROOTS, *filter(None, [os.environ.get("PYTHONPATH")])]
)

import numpy as np
import rclpy
import torch
from geometry_msgs.msg import Pose
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from frs_bringup.sim_demo import stop_stack
from frs_control.kinematics import REST_QPOS
from frs_control.messages import ns_to_stamp, stamp_to_ns
from frs_control.ros_executor import ACTION_BURST_QOS, LATCHED_QOS
from frs_msgs.action import ExecuteChunk, SteerChunk
from frs_msgs.msg import ObjectStates
from frs_sim import scene
from frs_sim.studies.generalist import GeneralistRecipe, fit_action_normalizer, make_policy
from frs_sim.tabletop_adapter import OBJECTS, TabletopAdapter
from frs_steering.adapters.base import ReferenceSettings, Sample
from frs_steering.checkpoint import load_policy, save_policy
from frs_steering.package_data import shipped_checkpoint
from frs_steering.steer import steer

INSTRUCTION = "put the red cube on the yellow mat"
ARM_JOINTS = [f"fr3_joint{i}" for i in range(1, 8)]
FINGER_JOINTS = ["fr3_finger_joint1", "fr3_finger_joint2"]
CUBES = [f"{name}_cube" for name in scene.OBJECT_NAMES]
MATS = [f"{name}_mat" for name in scene.TARGET_NAMES]
POSITIONS = [(0.5, 0.1, 0.02), (0.55, -0.1, 0.02), (0.6, 0.0, 0.02)] + [
    (0.45, -0.2, 0.0),
    (0.6, 0.2, 0.0),
    (0.4, 0.25, 0.0),
]
TRAJECTORY_TOPIC = "joint_trajectory_controller/joint_trajectory"
FLOOR_ACTION = "frs/bench_floor"
#: ms the median ROS overhead may exceed the median rclpy floor (issue 14).
TARGET_MARGIN_MS = 2.0
#: The bench's phases: the rig's policy host alone, then with the robot PC's controller beside it.
POLICY_HOST = "policy host"
WITH_CONTROLLER = "with the arm controller"


def serve_floor() -> None:
    """A minimal SteerChunk server that succeeds at once: rclpy's own action round trip."""
    from rclpy.action import ActionServer

    def execute(goal_handle):  # noqa: ANN001, ANN202
        goal_handle.succeed()
        return SteerChunk.Result(outcome=SteerChunk.Result.OUTCOME_SUCCEEDED)

    rclpy.init()
    node = Node("bench_floor", start_parameter_services=False, enable_rosout=False)
    ActionServer(node, SteerChunk, FLOOR_ACTION, execute_callback=execute, result_timeout=2.0)
    try:
        rclpy.spin(node, executor=SingleThreadedExecutor())
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        rclpy.try_shutdown()


def _checkpoint(path: str | None, scratch: Path) -> Path:
    """The given or shipped checkpoint, else an untrained generalist-sized one (same compute)."""
    if path:
        return Path(path)
    if shipped_checkpoint().is_dir():
        return shipped_checkpoint()
    actions = torch.rand(64, 10, 7) * 0.1 - 0.05
    print("no shipped generalist: timing an untrained policy of the generalist's size")
    return save_policy(make_policy(fit_action_normalizer(actions), GeneralistRecipe()), scratch)


class InProcess:
    """The steering node's per-goal work on the same messages, without ROS."""

    def __init__(self, checkpoint: Path) -> None:
        self.policy = load_policy(checkpoint).compile_velocity()  # as the node serves it
        self.adapter = TabletopAdapter()
        self.adapter.bind(self.policy)
        self.embedding = self.adapter.encode_instruction(INSTRUCTION)
        self.settings = ReferenceSettings()

    def __call__(self, joints: JointState, objects: ObjectStates, goal: SteerChunk.Goal) -> None:
        scene = Sample(stamp_to_ns(objects.header.stamp), self.adapter.parse(OBJECTS, objects))
        observation = self.adapter.observation(
            self.adapter.joint_sample(joints), {OBJECTS: scene}, self.embedding, INSTRUCTION
        )
        built = self.adapter.layout.reference(
            self.policy.spec, self.settings, goal.reference, observation
        )
        steer(
            self.policy,
            built.chunk,
            observation=observation.policy_input,
            mask=built.mask,
            reference_normalized=built.normalized,
            generator=torch.Generator().manual_seed(int(goal.seed)),
            include_base_sample=True,
        )


class Client:
    """A lean client node (no parameter services, no rosout) driving the nodes under test."""

    def __init__(self) -> None:
        self.node = Node("bench_ros_overhead", start_parameter_services=False, enable_rosout=False)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.joints = self.node.create_publisher(
            JointState, "joint_states", qos_profile_sensor_data
        )
        self.objects = self.node.create_publisher(
            ObjectStates, "frs/object_states", qos_profile_sensor_data
        )
        self.instruction = self.node.create_publisher(String, "frs/instruction", LATCHED_QOS)
        self.steering = ActionClient(self.node, SteerChunk, "frs/steer_chunk", **ACTION_BURST_QOS)
        self.controller = ActionClient(
            self.node, ExecuteChunk, "frs/execute_chunk", **ACTION_BURST_QOS
        )
        self.floor = ActionClient(self.node, SteerChunk, FLOOR_ACTION)
        self.commands: list[int] = []  # arrival times (ns) of trajectory commands
        self.node.create_subscription(
            JointTrajectory, TRAJECTORY_TOPIC, lambda _msg: self.commands.append(time.time_ns()), 10
        )

    def spin_until(self, done, timeout: float) -> bool:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)  # returns as soon as work arrives
        return done()

    def result(self, client: ActionClient, goal, timeout: float = 10.0):  # noqa: ANN001, ANN201
        sent = client.send_goal_async(goal)
        if not self.spin_until(sent.done, timeout) or not sent.result().accepted:
            raise RuntimeError(f"{type(goal).__name__} not accepted")
        result = sent.result().get_result_async()
        if not self.spin_until(result.done, timeout):
            raise RuntimeError(f"{type(goal).__name__}: no result")
        return result.result().result


def _messages() -> tuple[JointState, ObjectStates]:
    positions = [*REST_QPOS.tolist(), 0.04, 0.04]
    # at rest, as a driver reports it: policies that read the EE velocity need the velocities
    joints = JointState(
        name=ARM_JOINTS + FINGER_JOINTS, position=positions, velocity=[0.0] * len(positions)
    )
    objects = ObjectStates(names=CUBES + MATS)
    objects.header.frame_id = "fr3_link0"
    for x, y, z in POSITIONS:
        pose = Pose()
        pose.position.x, pose.position.y, pose.position.z = x, y, z
        pose.orientation.w = 1.0
        objects.poses.append(pose)
    return joints, objects


def measure(client: Client, local: InProcess, chunks: int, first_command: bool) -> dict:
    """Per-chunk seconds: in-process, over ROS, inside the node, stamp -> first command."""
    if not client.spin_until(client.steering.server_is_ready, 60.0):
        raise RuntimeError("steering node did not come up")
    if not client.spin_until(client.floor.server_is_ready, 30.0):
        raise RuntimeError("floor action server did not come up")
    if first_command and not client.spin_until(client.controller.server_is_ready, 60.0):
        raise RuntimeError("arm controller did not come up")
    client.spin_until(lambda: client.joints.get_subscription_count() > 0, 10.0)
    client.instruction.publish(String(data=INSTRUCTION))
    joints, objects = _messages()
    rows: dict[str, list[float]] = {
        "local": [],
        "ros": [],
        "inside": [],
        "first_command": [],
        "floor": [],
    }
    warmup, rejected, i = 10, 0, 0
    started = time.monotonic()
    while len(rows["ros"]) < chunks:
        goal = SteerChunk.Goal(method="frs", seed=i)
        goal.reference.direction.y = 1.0
        goal.reference.magnitude = 1.0
        for path in ("local", "ros") if i % 2 == 0 else ("ros", "local"):
            stamp_ns = time.time_ns()
            joints.header.stamp = objects.header.stamp = ns_to_stamp(stamp_ns)
            client.joints.publish(joints)
            client.objects.publish(objects)
            if path == "local":
                local(joints, objects, goal)
                local_s = (time.time_ns() - stamp_ns) * 1e-9
                continue
            goal.observation_stamp = joints.header.stamp
            result = client.result(client.steering, goal)
            ros_s = (time.time_ns() - stamp_ns) * 1e-9
            if result.outcome != SteerChunk.Result.OUTCOME_SUCCEEDED:
                if "instruction" not in result.reason and i >= warmup:
                    print(f"chunk {i}: {result.reason}")
                rejected += 1
                time.sleep(0.2)  # e.g. the node is still embedding the first instruction
                break
            floor_start = time.perf_counter()
            client.result(client.floor, SteerChunk.Goal())
            floor_s = time.perf_counter() - floor_start
            first_s = float("nan")
            if first_command:
                client.commands.clear()
                execute = ExecuteChunk.Goal(chunk=result.refined, max_points=5)
                client.controller.send_goal_async(execute)
                if client.spin_until(lambda: bool(client.commands), 5.0):
                    first_s = (client.commands[0] - stamp_ns) * 1e-9
        else:
            if i >= warmup:
                rows["local"].append(local_s)
                rows["ros"].append(ros_s)
                rows["inside"].append(result.diagnostics.total_ms * 1e-3)
                rows["first_command"].append(first_s)
                rows["floor"].append(floor_s)
                if len(rows["ros"]) % 50 == 0:
                    rate = len(rows["ros"]) / (time.monotonic() - started)
                    print(f"  {len(rows['ros'])}/{chunks} chunks ({rate:.1f}/s)", flush=True)
        i += 1
    rows["rejected"] = rejected
    return rows


def summarize(rows: dict) -> dict:
    """Percentiles of one phase, the paired overhead - floor, the verdict, the per-chunk pairs."""
    local, ros = np.array(rows["local"]) * 1e3, np.array(rows["ros"]) * 1e3
    overhead = ros - local
    floor = np.array(rows["floor"]) * 1e3
    first = np.array(rows["first_command"]) * 1e3
    first = first[np.isfinite(first)]

    def stats(values: np.ndarray) -> dict:
        if not len(values):
            return {}
        return {
            q: float(np.percentile(values, p))
            for q, p in (("p10", 10), ("median", 50), ("p90", 90))
        }

    return {
        "chunks": len(ros),
        "in_process_ms": stats(local),
        "ros_ms": stats(ros),
        "inside_node_ms": stats(np.array(rows["inside"]) * 1e3),
        "overhead_ms": stats(overhead),
        "rclpy_action_floor_ms": stats(floor),
        "overhead_minus_floor_ms": stats(overhead - floor),
        "stamp_to_first_command_ms": stats(first),
        "not_served": rows["rejected"],
        "meets_target": bool(np.median(overhead) <= np.median(floor) + TARGET_MARGIN_MS),
        "per_chunk_ms": {
            "overhead": np.round(overhead, 3).tolist(),
            "floor": np.round(floor, 3).tolist(),
        },
    }


def plot(phases: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    host = phases[POLICY_HOST]
    series = {
        "in-process steer": host["local"],
        "SteerChunk over ROS (policy host)": host["ros"],
    }
    shared = phases.get(WITH_CONTROLLER)
    if shared is not None:
        series["SteerChunk over ROS (with the arm controller)"] = shared["ros"]
        series["stamp -> first command"] = [v for v in shared["first_command"] if np.isfinite(v)]
    for label, values in series.items():
        if values:
            ms = np.sort(np.array(values) * 1e3)
            left.plot(ms, np.linspace(0, 1, len(ms)), label=label)
    left.set(xlabel="ms from observation stamp", ylabel="fraction of chunks", title="latency CDF")
    left.legend(fontsize=8)
    overheads = {
        name: (np.array(rows["ros"]) - np.array(rows["local"])) * 1e3
        for name, rows in phases.items()
    }
    floor = np.array(host["floor"]) * 1e3
    bins = np.linspace(*np.percentile(np.concatenate([*overheads.values(), floor]), [1, 99]), 40)
    for name, overhead in overheads.items():
        right.hist(overhead, bins=bins, alpha=0.5, label=f"overhead ({name})")
    right.hist(floor, bins=bins, alpha=0.5, label="rclpy floor (empty goal)")
    right.axvline(
        float(np.median(overheads[POLICY_HOST])), color="r", label="median overhead (policy host)"
    )
    target = float(np.median(floor)) + TARGET_MARGIN_MS
    right.axvline(target, color="k", linestyle="--", label="target: median floor + 2 ms")
    right.set(xlabel="ROS - in-process (ms), paired per chunk", title="ROS overhead")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _start(module: str | None, params: list[str]) -> subprocess.Popen:
    """A node (``python -m module --ros-args ...``) or this file's floor server, quiet."""
    command = (
        [sys.executable, "-m", module, "--ros-args", *params]
        if module
        else [sys.executable, __file__, *params]
    )
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def report(name: str, summary: dict) -> None:
    """Print one phase's medians and its verdict."""
    print(f"-- {name}: {summary['chunks']} chunks, paired in alternating order")
    for key, label in (
        ("in_process_ms", "in-process steer (same work, same messages)"),
        ("ros_ms", "SteerChunk action, stamp -> refined chunk"),
        ("inside_node_ms", "  of which inside the node's execute callback"),
        ("stamp_to_first_command_ms", "stamp -> controller's first command"),
        ("overhead_ms", "overhead (ROS - in-process, per chunk)"),
        ("rclpy_action_floor_ms", "rclpy floor: empty goal to a minimal server"),
    ):
        value = summary[key]
        if value:
            print(
                f"{label:<48} median {value['median']:7.2f} ms  "
                f"(p10 {value['p10']:.2f}, p90 {value['p90']:.2f})"
            )
    excess = summary["overhead_minus_floor_ms"]
    print(
        f"{'overhead - floor (paired per chunk)':<48} median {excess['median']:7.2f} ms  "
        f"(p10 {excess['p10']:.2f}, p90 {excess['p90']:.2f})"
    )
    overhead, floor = summary["overhead_ms"]["median"], summary["rclpy_action_floor_ms"]["median"]
    verdict = "meets" if summary["meets_target"] else "misses"
    print(
        f"target: median overhead {overhead:.2f} ms <= median floor {floor:.2f} ms + "
        f"{TARGET_MARGIN_MS:g} ms = {floor + TARGET_MARGIN_MS:.2f} ms: {verdict} "
        f"({overhead - floor:+.2f} ms over the floor); {summary['not_served']} goals not served"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=200, help="measured chunks per phase")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--feedback", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--markers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--first-command", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=Path("build/bench_ros_overhead"))
    parser.add_argument(
        "--param", action="append", default=[], help="extra steering parameter NAME:=VALUE"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the node's torch_threads default
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(102, 200)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    phases: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = _checkpoint(args.checkpoint, Path(scratch) / "policy")
        local = InProcess(checkpoint)
        steering = [
            "-p",
            f"checkpoint:={checkpoint}",
            "-p",
            f"publish_feedback:={str(args.feedback).lower()}",
            "-p",
            f"publish_markers:={str(args.markers).lower()}",
            *[item for param in args.param for item in ("-p", param)],
        ]
        floor_server = _start(None, ["--serve-floor"])
        processes = [_start("frs_steering.steering_node", steering), floor_server]
        rclpy.init()
        client = Client()
        try:
            print(f"{POLICY_HOST}: steering node + floor server", flush=True)
            phases[POLICY_HOST] = measure(client, local, args.chunks, first_command=False)
            if args.first_command:
                controller = ["-p", "output:=joint_trajectory"]
                processes.append(_start("frs_control.arm_controller_node", controller))
                print(f"{WITH_CONTROLLER}: + the arm controller", flush=True)
                phases[WITH_CONTROLLER] = measure(client, local, args.chunks, first_command=True)
        finally:
            client.node.destroy_node()
            rclpy.try_shutdown()
            stop_stack(processes)

    summaries = {name: summarize(rows) for name, rows in phases.items()}
    results = {
        "checkpoint": str(checkpoint),
        "feedback": args.feedback,
        "markers": args.markers,
        "target": "median overhead <= median rclpy floor + 2 ms (policy host)",
        "target_margin_ms": TARGET_MARGIN_MS,
        "meets_target": summaries[POLICY_HOST]["meets_target"],
        "phases": summaries,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(phases, args.out / "latency.png")
    print(f"checkpoint {checkpoint}; feedback {args.feedback}, markers {args.markers}")
    for name, summary in summaries.items():
        report(name, summary)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'latency.png'}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve-floor"]:
        serve_floor()
    else:
        main()
