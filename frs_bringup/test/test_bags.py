"""Record a simulated episode through the real nodes, then replay it, read it independently,
export its noise, and feed the tools broken bags. Every tool runs as its own process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rosbags.rosbag2 import Reader

from frs_bringup.bags import BagReader, BagWriter, typestore
from frs_bringup.sim_demo import default_params_file

pytestmark = pytest.mark.flaky(reruns=2)

SESSION_TOPICS = ("/joint_states", "/frs/object_states", "/frs/steering/record")


def _run(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:  # noqa: ANN001
    """A bag of one short novel-split episode: sim robot, controller, steering (shipped
    generalist, FRS, seeds drawn by the node), scripted proposer, recorded by frs_record."""
    root = tmp_path_factory.mktemp("session")
    params = yaml.safe_load(default_params_file().read_text())
    params["sim_robot"]["ros__parameters"]["max_episode_time"] = 6.0
    params["episode_runner"]["ros__parameters"]["episode_timeout"] = 14.0
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    # On a loaded 2-core machine the stack can spend a short episode warming up and log no
    # steering record at all; record again once rather than fail every replay test after it.
    for attempt in range(2):
        bag = root / f"session{attempt}" / "session"
        done = _run(
            "-m",
            "frs_bringup.sim_demo",
            "--params-file",
            str(root / "params.yaml"),
            "--episodes",
            "1",
            "--record",
            str(bag),
            timeout=150,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert (bag / "metadata.yaml").is_file(), done.stdout[-2000:]
        assert not (bag.parent / ".session.partial").exists()
        with Reader(bag) as reader:
            records = sum(
                c.msgcount for c in reader.connections if c.topic.endswith("frs/steering/record")
            )
        if records >= 3:
            break
    assert records >= 3, f"two recorded episodes logged only {records} steering records"
    return bag


def _replay(bag: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run("-m", "frs_bringup.bag_replay", "--bag", str(bag), "--out", str(out), *extra)


def test_replay_reproduces_logged_chunks(session: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = _replay(session, out, "--methods", "logged", "base", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    logged, base = metrics["methods"]
    assert metrics["chunks"] >= 3 and metrics["checkpoint_matches"]
    assert logged["chunks"] == metrics["chunks"] and not metrics["skipped"]
    # Same method, settings and seed: the logged refined chunks, to float tolerance.
    assert logged["max_abs_error"] < 1e-5, logged
    assert base["rms_error"] > 1e-3, "a different method must not reproduce them"
    assert (out / "report.md").read_text().count("| `logged` |") == 3
    assert (out / "report.png").stat().st_size > 10_000
    # The output bag holds the input plus the re-computed chunks, readable like any bag.
    with BagReader(out / "bag") as replayed:
        assert replayed.count("frs/replay/logged/refined") == metrics["chunks"]
        assert replayed.count("frs/replay/base/markers") == metrics["chunks"]
        assert replayed.count("joint_states") > 50
        records = [m.msg for m in replayed.messages(["frs/steering/record"])]
        chunks = [m.msg for m in replayed.messages(["frs/replay/logged/refined"])]
    for record, chunk in zip(records, chunks, strict=True):
        assert (record.header.stamp.sec, record.header.stamp.nanosec) == (
            chunk.header.stamp.sec,
            chunk.header.stamp.nanosec,
        )
        np.testing.assert_allclose(chunk.data, record.refined.data, atol=1e-5)


def test_records_logged_before_their_inputs_still_replay(session: Path, tmp_path: Path) -> None:
    """A recorder's subscriptions are not ordered across topics: on a loaded machine a steering
    record can be logged a moment before the joint state it was computed from. Replay and the
    noise export wait for such inputs instead of skipping the chunk."""
    from frs_control.messages import stamp_to_ns

    with BagReader(session) as bag:
        joints_logged = {
            stamp_to_ns(m.msg.header.stamp): m.log_ns for m in bag.messages(["joint_states"])
        }
        stamps = [stamp_to_ns(m.msg.header.stamp) for m in bag.messages(["frs/steering/record"])]
        raw = [(t, c.msgtype, log_ns, bytes(data)) for t, c, log_ns, data in bag.raw_messages()]
    early = iter(joints_logged[stamp] - 5_000_000 for stamp in stamps)  # 5 ms before
    rows = [
        (next(early) if topic == "frs/steering/record" else log_ns, topic, msgtype, data)
        for topic, msgtype, log_ns, data in raw
    ]
    reordered = tmp_path / "reordered"
    with BagWriter(reordered) as writer:
        for topic, msgtype in sorted({(topic, msgtype) for _, topic, msgtype, _ in rows}):
            writer.add_topic("/" + topic, msgtype)
        for log_ns, topic, _, data in sorted(rows, key=lambda row: row[0]):
            writer.write_raw("/" + topic, log_ns, data)
    out = tmp_path / "report"
    done = _replay(reordered, out, "--methods", "logged", "--no-progress", "--no-bag")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["chunks"] == len(stamps) and not metrics["skipped"], metrics["skipped"]
    assert metrics["methods"][0]["max_abs_error"] < 1e-5
    noise = tmp_path / "noise.safetensors"
    done = _run("-m", "frs_bringup.bag_noise", "--bag", str(reordered), "--out", str(noise))
    assert done.returncode == 0, done.stderr[-3000:]
    from frs_steering.learning.noise_data import NoiseDataset

    assert len(NoiseDataset.load(noise)) == len(stamps)


def test_session_bag_reads_without_this_workspace(session: Path) -> None:
    """mcap + mcap-ros2-support, and rosbags with an empty typestore, decode every message
    from the definitions embedded in the bag."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    counts: dict[str, int] = {}
    with open(next(session.glob("*.mcap")), "rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for schema, channel, _message, decoded in reader.iter_decoded_messages():
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            if schema.name == "frs_msgs/msg/SteeringRecord":
                assert len(decoded.refined.data) == decoded.refined.horizon * decoded.refined.dim
                assert decoded.seed >= 0 and decoded.method in ("frs", "base")
    assert all(counts.get(t, 0) > 0 for t in SESSION_TOPICS), counts

    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.EMPTY)
    with Reader(session) as reader:
        for connection in reader.connections:
            store.register(get_types_from_msg(connection.msgdef.data, connection.msgtype))
        decoded = 0
        for connection, _t, data in reader.messages():
            store.deserialize_cdr(data, connection.msgtype)
            decoded += 1
        assert decoded == reader.message_count
    metadata = yaml.safe_load((session / "metadata.yaml").read_text())
    assert metadata["rosbag2_bagfile_information"]["storage_identifier"] == "mcap"


def test_ros2_bag_record_style_db3_bag_replays(session: Path, tmp_path: Path) -> None:
    """A SQLite3 bag (version 8, as older ``ros2 bag record`` writes) with raw CDR and plain
    metadata replays the same."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    db3 = tmp_path / "rig_bag"
    with (
        Reader(session) as reader,
        Writer(db3, version=8, storage_plugin=StoragePlugin.SQLITE3) as w,
    ):
        conns = {}
        for c in reader.connections:
            conns[c.id] = w.add_connection(c.topic, c.msgtype, typestore=typestore())
        for c, t, data in reader.messages():
            w.write(conns[c.id], t, data)
    assert next(db3.glob("*.db3")).is_file()
    done = _replay(db3, tmp_path / "out", "--methods", "logged", "--no-bag", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["methods"][0]["max_abs_error"] < 1e-5


def _regenerated(policy, noise: torch.Tensor, observation: dict) -> np.ndarray:  # noqa: ANN001
    """Real-unit chunks a forward pass makes from ``noise``, one chunk per pass as the node
    computes them (a batched pass rounds differently, up to ~1e-4 on a sensitive chunk), gripper
    bounded as the node does."""
    from frs_steering.steer import generate_from_noise

    chunks = [
        generate_from_noise(
            policy, noise[i : i + 1], observation={k: v[i : i + 1] for k, v in observation.items()}
        )
        for i in range(len(noise))
    ]
    real = policy.spec.from_policy(torch.cat(chunks)).numpy().copy()
    real[..., -1] = real[..., -1].clip(0.0, 1.0)
    return real


def test_noise_export_regenerates_executed_chunks(session: Path, tmp_path: Path) -> None:
    """Steering records carry the noise behind each refined chunk: the export re-runs the
    logged call and keeps that noise, so the dataset's (observation, noise) pairs regenerate
    the executed chunks exactly, and deferred chunks stay deferrals (nothing steered)."""
    from frs_steering.checkpoint import load_policy
    from frs_steering.learning.noise_data import NoiseDataset
    from frs_steering.package_data import shipped_checkpoint

    out = tmp_path / "noise.safetensors"
    done = _run("-m", "frs_bringup.bag_noise", "--bag", str(session), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    data = NoiseDataset.load(out)
    with BagReader(session) as bag:
        records = [m.msg for m in bag.messages(["frs/steering/record"])]
    executed = np.stack([np.asarray(r.refined.data) for r in records])
    assert len(data) == len(records) and data.info["source"] == "bag_noise"
    assert data.info["labels"] == {"logged": len(records), "reversed": 0}
    policy = load_policy(str(shipped_checkpoint()))
    spec = policy.spec
    real = list(spec.real_dims)
    target = executed.reshape(len(data), *spec.chunk_shape)[:, :, real]
    observation = data.observation(slice(0, len(data)))
    rms = np.sqrt(((_regenerated(policy, data.noise, observation) - target) ** 2).mean((1, 2)))
    assert rms.max() < 1e-4, rms
    assert data.info["reconstruction_rms_max"] < 1e-4
    # The logged call's mask: what the reference commanded (here the position rows), not every
    # real dim as a reversal claims; nothing for a deferral.
    for record, steered in zip(records, data.steered, strict=True):
        assert bool(steered.any()) == (record.method == "frs"), record.method
        assert not steered[:, -1].any()
    # ... and the reasoner's proposal each chunk was asked with (what reference cloning learns)
    assert data.info["proposals"] and data.proposals is not None
    for record, proposal in zip(records, data.proposals.numpy(), strict=True):
        reference = record.reference
        assert bool(proposal[0]) == reference.defer == (record.method != "frs")
        direction = [reference.direction.x, reference.direction.y, reference.direction.z]
        np.testing.assert_allclose(proposal[1:4], 0.0 if reference.defer else direction, atol=1e-6)
        assert proposal[5] == reference.gripper
    np.testing.assert_allclose(
        data.noise.numpy().reshape(len(records), -1),
        np.stack([np.asarray(r.noise.data) for r in records]),
        atol=1e-5,
    )


def test_noise_export_reverses_chunks_without_a_usable_logged_noise(
    session: Path, tmp_path: Path
) -> None:
    """``--reverse`` (as for another checkpoint or a teleoperated ActionChunk topic): FRS's
    K-step reversal of every executed chunk, every real dim steered, its error reported."""
    from frs_steering.checkpoint import load_policy
    from frs_steering.learning.noise_data import NoiseDataset
    from frs_steering.package_data import shipped_checkpoint

    out = tmp_path / "noise.safetensors"
    done = _run(
        "-m", "frs_bringup.bag_noise", "--bag", str(session), "--out", str(out), "--reverse"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = NoiseDataset.load(out)
    with BagReader(session) as bag:
        records = [m.msg for m in bag.messages(["frs/steering/record"])]
    assert data.info["labels"] == {"logged": 0, "reversed": len(records)}
    policy = load_policy(str(shipped_checkpoint()))
    spec = policy.spec
    real = list(spec.real_dims)
    assert data.steered[:, :, real].all() and not data.steered[:, :, -1].any()
    executed = np.stack([np.asarray(r.refined.data) for r in records])
    target = executed.reshape(len(data), *spec.chunk_shape)[:, :, real]
    observation = data.observation(slice(0, len(data)))
    rms = np.sqrt(((_regenerated(policy, data.noise, observation) - target) ** 2).mean((1, 2)))
    assert rms.mean() == pytest.approx(data.info["reconstruction_rms_mean"], rel=1e-3)
    assert rms.max() == pytest.approx(data.info["reconstruction_rms_max"], rel=1e-3)
    logged = np.stack([np.asarray(r.noise.data) for r in records])
    assert not np.allclose(data.noise.numpy().reshape(len(records), -1), logged, atol=1e-3)


# ---------------------------------------------------------------------------- broken bags


def _truncated(session: Path, root: Path) -> Path:
    bag = root / "truncated"
    shutil.copytree(session, bag)
    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    return bag


def _corrupt(session: Path, root: Path) -> Path:
    bag = root / "corrupt"
    shutil.copytree(session, bag)
    mcap = next(bag.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    rng = np.random.default_rng(0)
    middle = len(data) // 3
    data[middle : middle + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    data[-600:-300] = b"\xff" * 300  # the summary section and footer
    mcap.write_bytes(bytes(data))
    return bag


def _empty(_session: Path, root: Path) -> Path:
    with BagWriter(root / "empty") as writer:
        writer.add_topic("/joint_states", "sensor_msgs/msg/JointState")
    return root / "empty"


def _missing_topics(session: Path, root: Path) -> Path:
    with BagReader(session) as bag, BagWriter(root / "missing") as writer:
        writer.add_topic("/joint_states", "sensor_msgs/msg/JointState")
        writer.add_topic("/frs/object_states", "frs_msgs/msg/ObjectStates")
        for topic, _c, t, data in bag.raw_messages(["joint_states", "frs/object_states"]):
            writer.write_raw("/" + topic, t, data)
    return root / "missing"


def _wrong_types(_session: Path, root: Path) -> Path:
    """Every topic the tools need, each holding strings (a bag of another stack)."""
    with BagWriter(root / "wrong") as writer:
        text = typestore().types["std_msgs/msg/String"](data="not a joint state")
        for topic in SESSION_TOPICS:
            writer.add_topic(topic, "std_msgs/msg/String")
            writer.write(topic, 1_000_000_000, text)
    return root / "wrong"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_truncated, "bag"),
        (_corrupt, "corrupt"),
        (_empty, "empty"),
        (_missing_topics, "lacks messages on ['frs/steering/record']"),
        (lambda _s, root: root / "nowhere", "does not exist"),
        (_wrong_types, "joint_states holds ['std_msgs/msg/String']"),
    ],
    ids=["truncated", "corrupt", "empty", "missing-topics", "missing-path", "wrong-types"],
)
def test_broken_bags_fail_clearly_and_write_nothing(session, tmp_path, make, message) -> None:  # noqa: ANN001
    bag = make(session, tmp_path)
    out = tmp_path / "report"
    for module in ("frs_bringup.bag_replay", "frs_bringup.bag_noise"):
        target = out if module.endswith("replay") else tmp_path / "noise.safetensors"
        done = _run("-m", module, "--bag", str(bag), "--out", str(target), "--no-progress")
        assert done.returncode == 2, (module, done.stdout[-1000:], done.stderr[-2000:])
        assert "error:" in done.stderr and message in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        assert not target.exists()
        assert not list(tmp_path.glob(".report*")) and not list(tmp_path.glob("*.partial"))


def test_recorded_bag_detects_every_flipped_byte(session: Path, tmp_path: Path) -> None:
    """frs_record writes MCAP CRCs (chunks, data section, summary); a single flipped byte
    anywhere in the recorded file, steering-record payloads included, is a BagError on
    reading and makes the replay tool fail, never replay different numbers."""
    from mcap.reader import make_reader
    from mcap.records import Chunk, DataEnd
    from mcap.stream_reader import StreamReader

    from frs_bringup.bags import BagError

    mcap = next(session.glob("*.mcap"))
    records = list(StreamReader(str(mcap), emit_chunks=True, validate_crcs=True).records)
    assert all(r.uncompressed_crc for r in records if isinstance(r, Chunk))
    assert next(r for r in records if isinstance(r, DataEnd)).data_section_crc
    original = mcap.read_bytes()
    with mcap.open("rb") as stream:
        payloads = [
            m.data
            for _s, channel, m in make_reader(stream).iter_messages()
            if channel.topic == "/frs/steering/record"
        ]
    record_at = [original.find(p) for p in payloads[:3]]
    assert min(record_at) > 0
    positions = sorted(
        {*range(0, len(original), max(1, len(original) // 300)), len(original) - 1}
        | {at + k for at, p in zip(record_at, payloads, strict=False) for k in (0, len(p) // 2)}
    )
    bag = tmp_path / "flipped"
    shutil.copytree(session, bag)
    target = next(bag.glob("*.mcap"))
    undetected = []
    for position in positions:
        data = bytearray(original)
        data[position] ^= 0x01
        target.write_bytes(bytes(data))
        try:
            with BagReader(bag) as reader:
                for _ in reader.messages(sorted(reader.connections)):
                    pass
            undetected.append(position)
        except BagError:
            pass
    assert not undetected, f"flips at {undetected} of {len(original)} bytes went unnoticed"
    # The replay tool on a flipped steering-record payload byte: a clear error, no output.
    data = bytearray(original)
    data[record_at[0] + len(payloads[0]) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    out = tmp_path / "report"
    done = _replay(bag, out, "--methods", "logged", "--no-progress")
    assert done.returncode == 2 and "CRC" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not out.exists()


def test_killed_recorder_leaves_no_bag_under_the_name(tmp_path: Path) -> None:
    bag = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "frs_bringup.recorder", "--out", str(bag)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "recording" in proc.stdout.readline()
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not bag.exists() and (tmp_path / ".killed.partial").is_dir()
    # A later recording to the same name clears the leftover and closes cleanly on SIGINT.
    proc = subprocess.Popen(
        [sys.executable, "-m", "frs_bringup.recorder", "--out", str(bag)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert "recording" in proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=20)[0]
    assert proc.returncode == 0, output
    assert (bag / "metadata.yaml").is_file() and not (tmp_path / ".killed.partial").exists()
