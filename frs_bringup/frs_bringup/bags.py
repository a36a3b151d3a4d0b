"""rosbag2 files for FRS-ROS: the topics worth recording, a typestore with ``frs_msgs``, a
crash-safe MCAP writer and a validating reader. No rclpy (the ``rosbags`` library does the I/O).

- :data:`RECORD_TOPICS`: what a session is replayed from (observation, instruction, reference,
  steering records, diagnostics, commands, episode status, markers).
- :func:`typestore`: the ROS 2 Jazzy types plus ``frs_msgs`` registered from its ``.msg`` text,
  so MCAP bags embed every definition and ``ros2 bag info/play`` or ``mcap`` readers need no
  workspace.
- :class:`BagWriter`: writes into a hidden ``.<name>.partial`` directory and moves the finished
  bag (``metadata.yaml`` + ``<name>.mcap``) to its final name only on close, so a killed writer
  never leaves an unreadable bag under the name a user asked for. Memory stays bounded: rosbags
  flushes each 1 MiB chunk to disk. On close it fills in the MCAP CRCs rosbags leaves at 0
  (:func:`add_crcs`: every chunk, the data section, the summary).
- :class:`BagReader`: opens a directory bag (MCAP or SQLite3, as ``ros2 bag record`` writes)
  or a bare ``.mcap``/``.db3`` file, with topic remapping and a time range; anything wrong
  (missing, truncated, corrupt, empty, missing topics, undecodable messages) raises
  :class:`BagError` with the reason. Every MCAP file is checked against its CRCs before it is
  read (:func:`verify_mcap`), and ``metadata.yaml`` against the verified MCAP, so a flipped
  byte is an error, never silently different data. SQLite3 bags carry no checksums.

``python -m frs_bringup.bags verify BAG`` checks a bag; ``python -m frs_bringup.bags add-crcs
BAG`` fills in the CRCs of an MCAP bag written without them (older ``frs_record``), which a
reader otherwise refuses.
"""

from __future__ import annotations

import argparse
import shutil
import stat
import struct
import sys
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

PACKAGE_ROOT = Path(__file__).resolve().parents[1]

#: topic -> message type recorded by default (relative names, as the nodes use them).
RECORD_TOPICS: dict[str, str] = {
    "joint_states": "sensor_msgs/msg/JointState",
    "frs/object_states": "frs_msgs/msg/ObjectStates",
    "frs/instruction": "std_msgs/msg/String",
    "frs/reference": "frs_msgs/msg/CoarseReference",
    "frs/steering/record": "frs_msgs/msg/SteeringRecord",
    "frs/diagnostics": "frs_msgs/msg/SteeringDiagnostics",
    "frs/episode_status": "frs_msgs/msg/EpisodeStatus",
    "frs/markers": "visualization_msgs/msg/MarkerArray",
    "forward_velocity_controller/commands": "std_msgs/msg/Float64MultiArray",
    "joint_trajectory_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "gripper_controller/commands": "std_msgs/msg/Float64MultiArray",
}
#: Topics published with sensor QoS (best effort) and latched ones (transient local).
SENSOR_TOPICS = frozenset({"joint_states", "frs/object_states", "camera/image_raw"})
LATCHED_TOPICS = frozenset({"frs/instruction"})


class BagError(Exception):
    """A bag cannot be used; ``str(err)`` says which bag and why."""


def frs_msgs_dir() -> Path:
    """The ``msg`` folder of frs_msgs: ament share directory, venv share, or the source tree."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("frs_msgs")) / "msg")
    except (ImportError, LookupError, OSError):
        pass
    candidates += [
        Path(sys.prefix, "share", "frs_msgs", "msg"),
        PACKAGE_ROOT.parent / "frs_msgs" / "msg",
    ]
    for path in candidates:
        if any(path.glob("*.msg")):
            return path
    raise BagError(f"frs_msgs .msg files not found (searched {', '.join(map(str, candidates))})")


@cache
def typestore() -> Any:
    """ROS 2 Jazzy types plus every ``frs_msgs/msg/*`` type from its ``.msg`` definition."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types: dict = {}
    for path in sorted(frs_msgs_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"frs_msgs/msg/{path.stem}"))
    store.register(types)
    return store


def msg_class(msgtype: str) -> Any:
    """The rosbags dataclass of ``msgtype`` (e.g. ``frs_msgs/msg/ActionChunk``)."""
    return typestore().types[msgtype]


# ---------------------------------------------------------------------------- MCAP CRCs

MCAP_MAGIC = b"\x89MCAP0\r\n"
_OP_CHUNK, _OP_DATA_END, _OP_FOOTER = 0x06, 0x0F, 0x02
_FOOTER_SIZE = 1 + 8 + 8 + 8 + 4  # opcode, length, summary_start, summary_offset_start, crc


def _regular_file(path: Path) -> int:
    """Size of ``path`` (symlinks followed); BagError unless it is a regular file."""
    try:
        info = path.stat()
    except OSError as error:
        raise BagError(f"cannot read {path}: {error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise BagError(f"{path} is not a regular file")
    return info.st_size


def add_crcs(path: str | Path) -> Path:
    """Fill in the chunk, data-section and summary CRCs of an MCAP file in place.

    rosbags writes them as 0 ("not computed"), so flipped bytes would go unnoticed. A CRC that
    is already set must match (BagError otherwise: the file changed since it was written)."""
    path = Path(path)
    size = _regular_file(path)
    with path.open("r+b") as stream:
        if stream.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
            raise BagError(f"{path} is not an MCAP file")
        running, position = zlib.crc32(MCAP_MAGIC), len(MCAP_MAGIC)
        while True:
            head = stream.read(9)
            if len(head) != 9:
                raise BagError(f"{path} ends before its DataEnd record")
            opcode, length = head[0], struct.unpack("<Q", head[1:])[0]
            if length > size - position - 9:
                raise BagError(f"{path}: record at {position} runs past the end of the file")
            body = bytearray(stream.read(length))
            if opcode == _OP_DATA_END:
                _set_crc(stream, path, position + 9, running, "data section")
                break
            if opcode == _OP_CHUNK:
                crc = zlib.crc32(_chunk_records(body, path, position))
                _set_crc(stream, path, position + 9 + 24, crc, f"chunk at {position}")
                struct.pack_into("<I", body, 24, crc)
                stream.seek(position + 9 + length)
            running = zlib.crc32(body, zlib.crc32(head, running))
            position += 9 + length
        footer = size - len(MCAP_MAGIC) - _FOOTER_SIZE
        stream.seek(footer)
        record = stream.read(_FOOTER_SIZE)
        if record[0] != _OP_FOOTER:
            raise BagError(f"{path} has no MCAP footer")
        summary_start = struct.unpack_from("<Q", record, 9)[0] or footer
        stream.seek(summary_start)
        summary = stream.read(size - len(MCAP_MAGIC) - 4 - summary_start)
        _set_crc(stream, path, size - len(MCAP_MAGIC) - 4, zlib.crc32(summary), "summary")
    return path


def _chunk_records(body: bytearray, path: Path, position: int) -> bytes:
    """The uncompressed records of the MCAP Chunk record whose body is ``body``."""
    from mcap.records import Chunk
    from mcap.stream_reader import get_chunk_data_stream

    start, end, uncompressed_size, _crc, name_length = struct.unpack_from("<QQQII", body)
    (records_length,) = struct.unpack_from("<Q", body, 32 + name_length)
    chunk = Chunk(
        compression=body[32 : 32 + name_length].decode("utf-8", "replace"),
        data=bytes(body[40 + name_length : 40 + name_length + records_length]),
        message_start_time=start,
        message_end_time=end,
        uncompressed_crc=0,
        uncompressed_size=uncompressed_size,
    )
    try:
        stream, length = get_chunk_data_stream(chunk)
        records = stream.read(length)
    except Exception as error:  # noqa: BLE001 - decompressors raise their own types
        raise BagError(f"{path}: chunk at {position} does not decompress: {error}") from None
    if len(records) != uncompressed_size:
        raise BagError(f"{path}: chunk at {position} is not the size it declares")
    return records


def _set_crc(stream: Any, path: Path, offset: int, crc: int, what: str) -> None:
    stream.seek(offset)
    (current,) = struct.unpack("<I", stream.read(4))
    if current not in (0, crc):
        raise BagError(f"{path}: {what} CRC is set and differs; the file is corrupt")
    stream.seek(offset)
    stream.write(struct.pack("<I", crc))


class _Bounded:
    """A read-only view of a file that never reads past its size (a corrupt length field
    must not make the parser allocate more than the file holds)."""

    def __init__(self, stream: Any, size: int) -> None:
        self._stream, self._size = stream, size

    def read(self, length: int = -1) -> bytes:
        left = self._size - self._stream.tell()
        return self._stream.read(left if length < 0 else max(0, min(length, left)))


def verify_mcap(path: str | Path) -> None:
    """BagError unless every byte of the MCAP file ``path`` that a reader uses is covered by a
    CRC that matches: each chunk's (or the data section's) and the summary's.

    Uses the ``mcap`` package (independent of the rosbags code that reads the messages)."""
    from mcap.records import Chunk, DataEnd, Footer, Message
    from mcap.stream_reader import StreamReader, get_chunk_data_stream

    path = Path(path)
    size = _regular_file(path)
    chunks_without_crc = loose_messages = 0
    data_crc, footer = None, None
    try:
        with path.open("rb") as stream:
            reader = StreamReader(
                _Bounded(stream, size),  # type: ignore[arg-type]
                emit_chunks=True,
                validate_crcs=True,
                record_size_limit=size,
            )
            for record in reader.records:
                if isinstance(record, Chunk):
                    if record.uncompressed_crc == 0:
                        chunks_without_crc += 1
                    else:
                        get_chunk_data_stream(record, validate_crc=True)
                elif isinstance(record, Message):
                    loose_messages += 1
                elif isinstance(record, DataEnd):
                    data_crc = record.data_section_crc
                elif isinstance(record, Footer):
                    footer = record
            if stream.tell() != size:
                raise BagError(f"{path} has {size - stream.tell()} bytes after its footer")
            footer_start = size - len(MCAP_MAGIC) - _FOOTER_SIZE
            summary_start = footer.summary_start if footer else 0
            if data_crc is None or not footer or not 0 <= summary_start <= footer_start:
                raise BagError(f"MCAP file {path} is corrupt: no DataEnd record or bad footer")
            summary_without_crc = footer.summary_crc == 0 and summary_start != 0
            # Without a summary, readers take schemas and channels from the data section.
            unindexed = summary_start == 0
            stream.seek(summary_start or footer_start)
            summary = stream.read(size - len(MCAP_MAGIC) - 4 - (summary_start or footer_start))
            if footer.summary_crc and zlib.crc32(summary) != footer.summary_crc:
                raise BagError(f"MCAP file {path} is corrupt: summary CRC differs")
    except BagError:
        raise
    except Exception as error:  # noqa: BLE001 - the mcap parser raises many types on bad bytes
        raise BagError(f"MCAP file {path} is corrupt: {type(error).__name__}: {error}") from None
    uncovered = []
    if data_crc == 0 and (chunks_without_crc or loose_messages):
        uncovered.append(f"{chunks_without_crc} chunks and {loose_messages} unchunked messages")
    if summary_without_crc:
        uncovered.append("the summary (schemas, channels, chunk index, statistics)")
    if unindexed and data_crc == 0:
        uncovered.append("the data section (no summary: schemas and channels are read there)")
    if uncovered:
        raise BagError(
            f"MCAP file {path} carries no CRC for {' or '.join(uncovered)}, so corruption "
            "could go unnoticed; if you trust it, add CRCs with "
            f"`python -m frs_bringup.bags add-crcs {path}`"
        )


# ---------------------------------------------------------------------------- writing


class BagWriter:
    """A rosbag2 MCAP bag (version 9) written crash-safely; use as a context manager."""

    def __init__(self, path: str | Path, *, storage: str = "mcap") -> None:
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; not overwriting")
        self._partial = self.path.parent / f".{self.path.name}.partial"
        if self._partial.exists():
            shutil.rmtree(self._partial)  # left behind by a killed writer
        self._partial.mkdir(parents=True)
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self._partial / self.path.name, version=9, storage_plugin=plugin)
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self._closed = False

    def add_topic(self, topic: str, msgtype: str, *, msgdef: str | None = None, rihs01=None):  # noqa: ANN001, ANN201
        """Declare ``topic`` (definition from :func:`typestore` unless ``msgdef`` is given)."""
        if topic in self._connections:
            return self._connections[topic]
        kwargs: dict[str, Any] = {"typestore": typestore()}
        if msgdef and rihs01:
            kwargs = {"msgdef": msgdef, "rihs01": rihs01}
        self._connections[topic] = self._writer.add_connection(topic, msgtype, **kwargs)
        self.counts[topic] = 0
        return self._connections[topic]

    def write_raw(self, topic: str, log_ns: int, data: bytes | memoryview) -> None:
        """CDR bytes of a message on a declared topic, logged at ``log_ns``."""
        self._writer.write(self._connections[topic], int(log_ns), data)
        self.counts[topic] += 1

    def write(self, topic: str, log_ns: int, msg: Any) -> None:
        """A rosbags message object (serialized with :func:`typestore`)."""
        msgtype = self._connections[topic].msgtype
        self.write_raw(topic, log_ns, typestore().serialize_cdr(msg, msgtype))

    def close(self) -> Path:
        """Finish the bag and move it to its final name."""
        if self._closed:
            return self.path
        self._closed = True
        self._writer.close()
        for file in self._partial.joinpath(self.path.name).glob("*.mcap"):
            add_crcs(file)
        (self._partial / self.path.name).rename(self.path)
        self._partial.rmdir()
        return self.path

    def abort(self) -> None:
        """Drop everything written (nothing is left under the final name)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - we are discarding it anyway
            pass
        shutil.rmtree(self._partial, ignore_errors=True)

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:  # noqa: ANN001
        if kind is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class BagMessage:
    """One decoded message: topic (after remapping), log time (ns) and the message."""

    topic: str
    log_ns: int
    msg: Any


def _has_mcap_footer(path: Path) -> bool:
    """Whether an MCAP file ends with its closing magic (a finished writer wrote it)."""
    size = path.stat().st_size
    if size < 2 * len(MCAP_MAGIC):
        return False
    with path.open("rb") as stream:
        stream.seek(size - len(MCAP_MAGIC))
        return stream.read() == MCAP_MAGIC


def parse_remaps(items: Sequence[str]) -> dict[str, str]:
    """``["old:=new", ...]`` -> ``{old: new}`` (leading slashes dropped); ValueError if bad."""
    remaps = {}
    for item in items:
        old, sep, new = item.partition(":=")
        if not sep or not old.strip("/") or not new.strip("/"):
            raise ValueError(f"bad remap {item!r}; use old:=new")
        remaps[old.strip("/")] = new.strip("/")
    return remaps


class BagReader:
    """A rosbag2 bag opened for replay (see the module docstring); a context manager."""

    def __init__(self, path: str | Path, *, remap: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        if self.path.is_dir() and not (self.path / "metadata.yaml").exists():
            files = sorted(self.path.glob("*.mcap")) + sorted(self.path.glob("*.db3"))
            if len(files) != 1:
                raise BagError(
                    f"bag {self.path} has no metadata.yaml (and not exactly one .mcap/.db3 file; "
                    "run `ros2 bag reindex` on it)"
                )
            self.path = files[0]
        if self.path.is_dir():
            _regular_file(self.path / "metadata.yaml")  # a FIFO or device would block
        else:
            _regular_file(self.path)
        files = [self.path] if self.path.is_file() else sorted(self.path.glob("*.mcap"))
        for file in files:
            _regular_file(file)
            if file.suffix == ".mcap" and not _has_mcap_footer(file):
                raise BagError(
                    f"bag {path} is truncated: {file.name} does not end with the MCAP footer "
                    "(writer killed?); recover it with `mcap recover` or re-record"
                )
            if file.suffix == ".mcap":
                verify_mcap(file)
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as error:  # rosbags raises several types for broken files
            raise BagError(f"cannot open bag {path}: {type(error).__name__}: {error}") from None
        if self.path.is_dir() and any(f.suffix == ".mcap" for f in files):
            try:
                self._check_metadata(files)
            except BaseException:
                self._reader.close()
                raise
        self._remap = dict(remap or {})
        self.connections: dict[str, list] = {}
        for connection in self._reader.connections:
            name = connection.topic.strip("/")
            name = self._remap.get(name, name)
            self.connections.setdefault(name, []).append(connection)
        self.message_count = int(self._reader.message_count)
        if self.message_count == 0:
            self.close()
            raise BagError(f"bag {path} is empty (no messages)")
        self.start_ns = int(self._reader.start_time)
        self.end_ns = int(self._reader.end_time)

    def _check_metadata(self, files: Sequence[Path]) -> None:
        """BagError unless ``metadata.yaml`` (which rosbags reads topics, counts, QoS and
        times from, and which no CRC covers) agrees with the verified MCAP files."""

        def summary(reader: Any) -> tuple:
            topics: dict[tuple, int] = {}
            for c in reader.connections:
                key = (c.topic, c.msgtype, repr(c.ext))
                topics[key] = topics.get(key, 0) + c.msgcount
            return topics, reader.message_count

        from_yaml = summary(self._reader)
        times = (self._reader.start_time, self._reader.end_time)
        topics: dict[tuple, int] = {}
        count, starts, ends = 0, [], []
        try:
            for file in files:
                with Reader(file) as bare:
                    file_topics, file_count = summary(bare)
                    for key, n in file_topics.items():
                        topics[key] = topics.get(key, 0) + n
                    count += file_count
                    if file_count:
                        starts.append(bare.start_time)
                        ends.append(bare.end_time)
        except Exception as error:  # rosbags raises several types for broken files
            raise BagError(
                f"cannot open bag {self.path}: {type(error).__name__}: {error}"
            ) from None
        mcap_times = (min(starts), max(ends)) if starts else times
        if from_yaml != (topics, count) or (count and times != mcap_times):
            raise BagError(
                f"bag {self.path}: metadata.yaml disagrees with its MCAP data (topics, types, "
                "QoS, message counts or times); metadata.yaml is corrupt. Remove it to read "
                "the .mcap file alone, or rebuild it with `ros2 bag reindex`"
            )

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count(self, topic: str) -> int:
        return sum(c.msgcount for c in self.connections.get(topic, []))

    def msgtype(self, topic: str) -> str | None:
        connections = self.connections.get(topic)
        return connections[0].msgtype if connections else None

    def require(self, topics: Sequence[str], *, why: str = "") -> None:
        """BagError naming every topic of ``topics`` with no messages in the bag."""
        missing = [t for t in topics if self.count(t) == 0]
        if missing:
            present = {t: self.count(t) for t in sorted(self.connections)}
            reason = f" ({why})" if why else ""
            raise BagError(
                f"bag {self.path} lacks messages on {missing}{reason}; it has {present}. "
                "Record them, or map other names with --remap old:=new"
            )

    def check_types(self, expected: Mapping[str, Collection[str]]) -> None:
        """BagError naming every topic of ``expected`` recorded with a message type not among
        its types: a message of another type decodes, and would then be read as what it is not
        (a bag of another stack, or ``--remap`` onto the wrong topic)."""
        wrong = {
            topic: sorted({c.msgtype for c in self.connections.get(topic, [])} - set(types))
            for topic, types in expected.items()
        }
        details = [
            f"{topic} holds {found}, expected {sorted(expected[topic])}"
            for topic, found in wrong.items()
            if found
        ]
        if details:
            raise BagError(f"bag {self.path} has wrong message types: {'; '.join(details)}")

    def time_window(self, start_s: float | None, end_s: float | None) -> tuple[int, int]:
        """Absolute ``[start, end]`` ns from offsets in seconds after the bag's first message."""
        start = self.start_ns + int(round((start_s or 0.0) * 1e9))
        end = self.end_ns if end_s is None else self.start_ns + int(round(end_s * 1e9))
        if end < start:
            raise BagError(f"empty time range: --end {end_s} is before --start {start_s}")
        return start, end

    def raw_messages(
        self, topics: Sequence[str] | None = None, start_ns: int | None = None, end_ns=None
    ) -> Iterator[tuple[str, Any, int, bytes]]:
        """(topic, connection, log ns, CDR bytes) in log-time order, ``end_ns`` included."""
        if topics is None:
            connections = [c for cs in self.connections.values() for c in cs]
        else:
            connections = [c for t in topics for c in self.connections.get(t, [])]
        if not connections:
            return
        stop = None if end_ns is None else int(end_ns) + 1
        try:
            for connection, log_ns, data in self._reader.messages(
                connections, start=start_ns, stop=stop
            ):
                name = connection.topic.strip("/")
                yield self._remap.get(name, name), connection, log_ns, data
        except BagError:
            raise
        except Exception as error:
            raise BagError(
                f"bag {self.path} is truncated or corrupt: {type(error).__name__}: {error}"
            ) from None

    def messages(
        self, topics: Sequence[str], start_ns: int | None = None, end_ns: int | None = None
    ) -> Iterator[BagMessage]:
        """Decoded messages of ``topics`` in log-time order (BagError if one does not decode)."""
        store = typestore()
        for topic, connection, log_ns, data in self.raw_messages(topics, start_ns, end_ns):
            try:
                msg = store.deserialize_cdr(data, connection.msgtype)
            except Exception as error:
                raise BagError(
                    f"bag {self.path}: message on {topic} at {log_ns * 1e-9:.3f} s does not decode "
                    f"as {connection.msgtype} ({type(error).__name__}: {error}); the bag is "
                    "corrupt or was recorded with other message definitions"
                ) from None
            yield BagMessage(topic, log_ns, msg)


# ---------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``verify BAG...`` (exit 2 if one is unusable) or ``add-crcs BAG...``."""
    parser = argparse.ArgumentParser(description="Check bags, or add CRCs to MCAP bags.")
    parser.add_argument("command", choices=("verify", "add-crcs"))
    parser.add_argument("bags", nargs="+", type=Path)
    args = parser.parse_args(argv)
    code = 0
    for bag in args.bags:
        try:
            if args.command == "add-crcs":
                files = [bag] if bag.suffix == ".mcap" else sorted(bag.glob("*.mcap"))
                if not files:
                    raise BagError(f"no .mcap file at {bag}")
                for file in files:
                    add_crcs(file)
                    verify_mcap(file)
            with BagReader(bag) as reader:
                for _ in reader.messages(sorted(reader.connections)):
                    pass
            print(f"ok {bag} ({reader.message_count} messages)")
        except BagError as error:
            print(f"error: {error}", file=sys.stderr)
            code = 2
    return code


if __name__ == "__main__":
    sys.exit(main())
