"""Hostile input for the bag reader: random corruptions of a bag written by :class:`BagWriter`
(byte flips, truncation, huge declared record lengths, bogus metadata, missing files, FIFOs,
devices and directories where files belong). Each case either reads exactly the original
messages or raises :class:`BagError`, within a time bound; never another exception, never
silently different data. No ROS processes: the bag is written here."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rosbags.rosbag2 import StoragePlugin, Writer

from frs_bringup.bags import BagError, BagReader, BagWriter, add_crcs, msg_class, typestore
from frs_bringup.testing import time_bound

TOPICS = {
    "/joint_states": "sensor_msgs/msg/JointState",
    "/frs/instruction": "std_msgs/msg/String",
}
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


def _write_bag(path: Path, messages: int = 600) -> None:
    """Two topics over two MCAP chunks (the writer closes a chunk at 1 MiB)."""
    joint_state = msg_class("sensor_msgs/msg/JointState")
    header, stamp = msg_class("std_msgs/msg/Header"), msg_class("builtin_interfaces/msg/Time")
    string = msg_class("std_msgs/msg/String")
    with BagWriter(path) as writer:
        for topic, msgtype in TOPICS.items():
            writer.add_topic(topic, msgtype)
        writer.write("/frs/instruction", 10**9, string("push the green cube " * 20))
        for i in range(messages):
            position = np.linspace(0.0, 1.0, 300) + i
            msg = joint_state(header(stamp(1, i), "base"), [], position, np.zeros(0), np.zeros(0))
            writer.write("/joint_states", 10**9 + (i + 1) * 10**6, msg)


def _contents(path: Path) -> list[tuple[str, int, bytes]]:
    with BagReader(path) as bag:
        return [(topic, log_ns, bytes(data)) for topic, _c, log_ns, data in bag.raw_messages()] + [
            ("count", bag.message_count, b""),
            ("end", bag.end_ns, b""),
        ]


class _Messages(list):
    """Messages of a bag, with a short repr (hypothesis prints fixtures of failing cases)."""

    def __repr__(self) -> str:
        return f"<{len(self)} messages>"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    bag = tmp_path_factory.mktemp("bags") / "pristine"
    _write_bag(bag)
    return bag, _Messages(_contents(bag))


@pytest.fixture
def work(pristine: tuple[Path, list], tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "bag"


def _fresh(pristine: Path, work: Path) -> Path:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(pristine, work)
    return work


def _outcome(bag: Path, original: list) -> str:
    """'error' or 'same'; anything else fails the test."""
    with time_bound():
        try:
            contents = _contents(bag)
        except BagError:
            return "error"
    assert contents == original, "a corrupt bag read as different data"
    return "same"


def _mcap(bag: Path) -> Path:
    return next(bag.glob("*.mcap"))


def _record_offsets(data: bytes) -> list[int]:
    """Offsets of the MCAP records of ``data`` (after the leading magic, up to the footer)."""
    offsets, position = [], 8
    while position + 9 <= len(data) - 8:
        offsets.append(position)
        position += 9 + struct.unpack_from("<Q", data, position + 1)[0]
    return offsets


def test_written_bag_carries_crcs_the_mcap_package_accepts(pristine) -> None:  # noqa: ANN001
    from mcap.reader import make_reader
    from mcap.records import Chunk, DataEnd, Footer
    from mcap.stream_reader import StreamReader

    bag, original = pristine
    records = list(StreamReader(str(_mcap(bag)), emit_chunks=True, validate_crcs=True).records)
    chunks = [r for r in records if isinstance(r, Chunk)]
    assert len(chunks) >= 2 and all(c.uncompressed_crc for c in chunks)
    assert next(r for r in records if isinstance(r, DataEnd)).data_section_crc != 0
    assert next(r for r in records if isinstance(r, Footer)).summary_crc != 0
    with _mcap(bag).open("rb") as stream:
        assert sum(1 for _ in make_reader(stream, validate_crcs=True).iter_messages()) == 601
    assert len(original) == 603


@SETTINGS
@given(position=st.floats(0.0, 1.0, exclude_max=True), bit=st.integers(0, 7))
def test_any_flipped_mcap_bit_is_an_error(pristine, work, position, bit) -> None:  # noqa: ANN001
    """Every bit of the MCAP file is covered by a CRC or a structural check."""
    bag = _fresh(pristine[0], work)
    data = bytearray(_mcap(bag).read_bytes())
    data[int(position * len(data))] ^= 1 << bit
    _mcap(bag).write_bytes(bytes(data))
    assert _outcome(bag, pristine[1]) == "error"


def test_flips_at_every_record_header_are_errors(pristine, work) -> None:  # noqa: ANN001
    """Opcode and length bytes of each record (incl. huge lengths), deterministic."""
    data = _mcap(pristine[0]).read_bytes()
    for offset in _record_offsets(data):
        for index, value in ((offset, 0x55), (offset + 8, 0x7F), (offset + 5, 0xFF)):
            bag = _fresh(pristine[0], work)
            corrupt = bytearray(data)
            corrupt[index] = value if corrupt[index] != value else value ^ 1
            _mcap(bag).write_bytes(bytes(corrupt))
            assert _outcome(bag, pristine[1]) == "error", (offset, index)


@SETTINGS
@given(keep=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_mcap_is_an_error(pristine, work, keep) -> None:  # noqa: ANN001
    bag = _fresh(pristine[0], work)
    data = _mcap(bag).read_bytes()
    _mcap(bag).write_bytes(data[: int(keep * len(data))])
    assert _outcome(bag, pristine[1]) == "error"


@SETTINGS
@given(
    at=st.floats(0.0, 1.0, exclude_max=True),
    length=st.sampled_from([2**32, 2**40, 2**63 - 1, 2**64 - 1]),
)
def test_huge_declared_lengths_are_errors(pristine, work, at, length) -> None:  # noqa: ANN001
    """A record claiming terabytes is refused quickly (reads are bounded by the file)."""
    bag = _fresh(pristine[0], work)
    data = bytearray(_mcap(bag).read_bytes())
    offsets = _record_offsets(bytes(data))
    offset = offsets[int(at * len(offsets))]
    struct.pack_into("<Q", data, offset + 1, length)
    _mcap(bag).write_bytes(bytes(data))
    assert _outcome(bag, pristine[1]) == "error"


@SETTINGS
@given(position=st.floats(0.0, 1.0, exclude_max=True), byte=st.integers(1, 255))
def test_flipped_metadata_yaml_is_an_error_or_harmless(pristine, work, position, byte) -> None:  # noqa: ANN001
    """metadata.yaml has no CRC: a change is either refused (it disagrees with the verified
    MCAP) or touches nothing the reader uses."""
    bag = _fresh(pristine[0], work)
    path = bag / "metadata.yaml"
    data = bytearray(path.read_bytes())
    data[int(position * len(data))] ^= byte
    path.write_bytes(bytes(data))
    _outcome(bag, pristine[1])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "rosbag2_bagfile_information: 5\n",
        "- [1, 2\n",
        "rosbag2_bagfile_information: {version: 9, storage_identifier: mcap}\n",
        "a: &a [*a]\n",
        "\x00\xff\xfe",
    ],
)
def test_bogus_metadata_yaml_is_an_error(pristine, work, text) -> None:  # noqa: ANN001
    bag = _fresh(pristine[0], work)
    (bag / "metadata.yaml").write_text(text, errors="surrogateescape")
    assert _outcome(bag, pristine[1]) == "error"


def _replace(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "dangling":
        path.symlink_to(path.parent / "nowhere")
    elif kind == "loop":
        path.symlink_to(path)


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "dev-zero", "dangling", "loop"])
@pytest.mark.parametrize("which", ["mcap", "metadata.yaml"])
def test_non_files_where_files_belong_are_errors(pristine, work, which, kind) -> None:  # noqa: ANN001
    bag = _fresh(pristine[0], work)
    target = _mcap(bag) if which == "mcap" else bag / "metadata.yaml"
    _replace(target, kind)
    outcome = _outcome(bag, pristine[1])
    # Without a readable metadata.yaml a directory with one .mcap is read as that file.
    assert outcome == "error" or (which, kind) in {
        ("metadata.yaml", "missing"),
        ("metadata.yaml", "dangling"),
        ("metadata.yaml", "loop"),
    }
    if which == "mcap":  # the bare file as well
        assert _outcome(target, pristine[1]) == "error"


def test_symlinked_bag_files_read_the_same(pristine, work) -> None:  # noqa: ANN001
    bag = _fresh(pristine[0], work)
    for file in (_mcap(bag), bag / "metadata.yaml"):
        moved = work.parent / f"elsewhere-{file.name}"
        file.rename(moved)
        file.symlink_to(moved)
    assert _outcome(bag, pristine[1]) == "same"


def _legacy_bag(path: Path, pristine: Path) -> None:
    """The pristine bag's messages written by rosbags alone (all CRCs 0), as frs_record did."""
    with (
        BagReader(pristine) as bag,
        Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer,
    ):
        connections = {
            c.topic: writer.add_connection(c.topic, c.msgtype, typestore=typestore())
            for cs in bag.connections.values()
            for c in cs
        }
        for _topic, connection, log_ns, data in bag.raw_messages():
            writer.write(connections[connection.topic], log_ns, data)


def test_bag_without_crcs_is_refused_until_crcs_are_added(pristine, tmp_path) -> None:  # noqa: ANN001
    legacy = tmp_path / "legacy"
    _legacy_bag(legacy, pristine[0])
    with pytest.raises(BagError, match="carries no CRC.*add-crcs"):
        BagReader(legacy)
    add_crcs(_mcap(legacy))
    assert _contents(legacy) == pristine[1]
    # A file whose CRC is set and wrong is not "fixed" by add_crcs.
    data = bytearray(_mcap(legacy).read_bytes())
    data[len(data) // 3] ^= 0x10
    _mcap(legacy).write_bytes(bytes(data))
    with pytest.raises(BagError, match="CRC"):
        add_crcs(_mcap(legacy))


def test_crc_of_the_data_section_covers_the_whole_data_section(pristine) -> None:  # noqa: ANN001
    """Cross-check add_crcs against the MCAP definition with plain zlib."""
    data = _mcap(pristine[0]).read_bytes()
    offsets = _record_offsets(data)
    data_end = next(o for o in offsets if data[o] == 0x0F)
    assert struct.unpack_from("<I", data, data_end + 9)[0] == zlib.crc32(data[:data_end])


def test_cli_verifies_and_adds_crcs(pristine, tmp_path) -> None:  # noqa: ANN001
    """``python -m frs_bringup.bags verify|add-crcs`` (exit 2 on an unusable bag)."""
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "frs_bringup.bags", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    legacy = tmp_path / "legacy"
    _legacy_bag(legacy, pristine[0])
    done = cli("verify", str(legacy), str(pristine[0]))
    assert done.returncode == 2 and "add-crcs" in done.stderr and "ok " in done.stdout
    done = cli("add-crcs", str(legacy))
    assert done.returncode == 0, done.stderr
    assert _contents(legacy) == pristine[1]


def _foreign_mcap(path: Path, *, crcs: bool) -> None:
    """A zstd-chunked bare MCAP from the ``mcap`` package's writer: with ``crcs`` it carries
    chunk and summary CRCs but no data-section CRC (as ``ros2 bag record`` writes by default)."""
    from mcap.writer import CompressionType
    from mcap.writer import Writer as McapWriter

    string = msg_class("std_msgs/msg/String")
    with path.open("wb") as stream:
        writer = McapWriter(stream, compression=CompressionType.ZSTD, enable_crcs=crcs)
        writer.start(profile="ros2", library="test")
        schema = writer.register_schema("std_msgs/msg/String", "ros2msg", b"string data")
        channel = writer.register_channel("/frs/instruction", "cdr", schema, {})
        for i in range(300):
            data = typestore().serialize_cdr(string(f"say {i} " * 40), "std_msgs/msg/String")
            writer.add_message(channel, 10**9 + i, data, 10**9 + i)
        writer.finish()


@pytest.fixture(scope="module")
def rig_style(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    path = tmp_path_factory.mktemp("rig") / "rig.mcap"
    _foreign_mcap(path, crcs=True)
    return path, _Messages(_contents(path))


def test_mcap_without_crcs_from_another_writer_is_refused_until_added(tmp_path, rig_style) -> None:  # noqa: ANN001
    path = tmp_path / "nocrc.mcap"
    _foreign_mcap(path, crcs=False)
    with pytest.raises(BagError, match="no CRC for 1 chunks"):
        BagReader(path)
    add_crcs(path)  # zstd chunks decompressed for their CRC
    assert _contents(path) == rig_style[1] and len(rig_style[1]) == 302


@SETTINGS
@given(position=st.floats(0.0, 1.0, exclude_max=True), byte=st.integers(1, 255))
def test_flips_in_a_bag_with_chunk_and_summary_crcs_only(
    rig_style, tmp_path, position, byte
) -> None:  # noqa: ANN001
    """Without a data-section CRC some bytes (message indexes) are covered by none; a flip
    there must leave the data read unchanged."""
    path = tmp_path / "rig.mcap"
    data = bytearray(rig_style[0].read_bytes())
    data[int(position * len(data))] ^= byte
    path.write_bytes(bytes(data))
    _outcome(path, rig_style[1])
