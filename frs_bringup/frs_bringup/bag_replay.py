"""Replay a recorded session through steering methods, open loop: ``frs_bag_replay``.

``python -m frs_bringup.bag_replay --bag runs/session1 --methods logged frs base --out report/``

For every ``frs/steering/record`` in the bag (one per chunk the steering node served) it rebuilds
the observation the chunk was computed from (the ``joint_states`` sample at the recorded stamp
and the observation adapter's inputs matched to it, the recorded instruction) and the reference
(the recorded ``CoarseReference`` with the node's recorded reference settings), with the same
adapter and matching code the node uses (``--params-file``: the node's parameter YAML), then
runs each method spec on it:

- ``logged``: the node's own method, parameters, steps, solver and seed -> reproduces the
  logged refined chunk (to float tolerance) when the checkpoint is the same;
- ``NAME[:key=value...]``: any steering method (``frs``, ``base``, ``partial_noising``,
  ``sample_rank``, ``direct``) with optional ``num_steps``, ``solver``, ``seed`` (default: the
  logged seed, so methods share their fresh noise) and method parameters, e.g.
  ``partial_noising:noise_level=0.3`` or ``frs:num_steps=5``.

Writes ``report.md``, ``report.png``, ``metrics.json`` and a bag ``bag/`` holding the input
messages plus ``/frs/replay/<label>/refined`` (``frs_msgs/ActionChunk``) and
``/frs/replay/<label>/markers`` (EE paths for rviz) per method. Nothing is written when the bag
is unusable: the error is printed and the exit code is 2.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frs_bringup.bags import RECORD_TOPICS, BagError, BagReader, BagWriter, parse_remaps

RECORD_TOPIC = "frs/steering/record"
JOINTS_TOPIC = "joint_states"
INSTRUCTION_TOPIC = "frs/instruction"
BUFFER = 2000  # samples kept per input topic for stamp lookup (40 s at 50 Hz)
#: A recorder's subscriptions are not ordered across topics: under load a steering record can be
#: logged before the joint state it was computed from. Records wait this long (log time) for
#: their inputs before they are matched.
INPUT_LATENESS_NS = 1_000_000_000
COLOURS = [(0.9, 0.1, 0.6, 1.0), (0.1, 0.6, 0.9, 1.0), (0.9, 0.5, 0.1, 1.0), (0.4, 0.2, 0.8, 1.0)]


# ---------------------------------------------------------------------------- method specs


@dataclass(frozen=True)
class MethodSpec:
    """One method/setting to replay; ``method`` None = the logged one."""

    label: str
    method: str | None = None
    params: dict = field(default_factory=dict)
    num_steps: int | None = None
    solver: str | None = None
    seed: int | None = None  # None = the logged seed


def parse_method(text: str) -> MethodSpec:
    """``logged`` or ``name[:key=value[:key=value...]]``; ValueError if malformed."""
    name, *items = text.split(":")
    if not name:
        raise ValueError(f"bad method spec {text!r}")
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"bad option {item!r} in {text!r}; use key=value")
        options[key] = value
    steps = options.pop("num_steps", None)
    solver = options.pop("solver", None)
    seed = options.pop("seed", None)
    params = {k: (int(v) if v.lstrip("-").isdigit() else float(v)) for k, v in options.items()}
    if name == "logged" and (params or steps or solver or seed):
        raise ValueError("'logged' takes no options: it replays the recorded settings")
    return MethodSpec(
        label=text,
        method=None if name == "logged" else name,
        params=params,
        num_steps=None if steps is None else int(steps),
        solver=solver,
        seed=None if seed is None else int(seed),
    )


# ---------------------------------------------------------------------------- rebuilding inputs


@dataclass
class Chunk:
    """One logged chunk and what it was computed from."""

    log_ns: int
    record: Any
    observation: Any  # StampedObservation
    reference: Any  # BuiltReference (None for a plain ActionChunk)


@dataclass
class Skipped:
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def total(self) -> int:
        return sum(self.reasons.values())


class InputBuilder:
    """Observations and references of logged chunks, built as the steering node builds them.

    The same observation adapter (``observation_adapter`` and ``adapter.*`` of the steering
    node's parameters ``params``; default: tabletop) and the same stamp matching
    (:class:`frs_steering.observation.InputBuffers`) as the node.
    """

    def __init__(self, policy: Any, params: dict[str, Any] | None = None) -> None:
        from frs_steering.observation import InputBuffers

        params = params or {}
        self.policy = policy
        self.adapter = steering_adapter(params)
        self.adapter.bind(policy)
        self.tolerance_ns = int(float(params.get("stamp_tolerance", 0.005)) * 1e9)
        self.inputs = InputBuffers(self.adapter, BUFFER)
        self._instructions: dict[str, Any] = {}

    def topics(self) -> dict[str, str]:
        """Bag topic -> stream key of the adapter's inputs."""
        return {spec.topic.strip("/"): spec.key for spec in self.adapter.streams()}

    def instruction(self, text: str) -> Any:
        text = text.strip()
        if not self.adapter.needs_instruction:
            return None
        if text not in self._instructions:
            self._instructions[text] = self.adapter.encode_instruction(text)
        return self._instructions[text]

    def settings(self, record: Any) -> Any:
        from frs_steering.adapters import ReferenceSettings

        return ReferenceSettings(
            frame_id=record.header.frame_id,
            action_space=record.refined.action_space,
            max_translation=float(record.max_translation),
            commanded_rows=int(record.commanded_rows),
            command_rotation=bool(record.command_rotation),
        )


def add_params_file_argument(parser: argparse.ArgumentParser) -> None:
    """``--params-file``: where the bag tools read the steering node's adapter and checkpoint."""
    parser.add_argument(
        "--params-file",
        type=Path,
        default=None,
        help="the stack's parameter YAML: the steering node's adapter and checkpoint "
        "(default: tabletop, shipped generalist)",
    )


def steering_adapter(params: dict[str, Any]) -> Any:
    """The observation adapter the steering node's ``params`` configure (default: tabletop)."""
    from frs_steering.adapters import make_adapter

    return make_adapter(
        str(params.get("observation_adapter", "tabletop")), params.get("adapter", {})
    )


def observed_topic_types(adapter: Any) -> dict[str, str]:
    """Bag topic -> message type of each stream an observation adapter reads."""
    return {spec.topic.strip("/"): spec.msg_type for spec in adapter.streams()}


def steering_parameters(params_file: Path | None) -> dict[str, Any]:
    """The steering node's ``ros__parameters`` in a parameter YAML ({} without a file)."""
    if params_file is None:
        return {}
    import yaml

    try:
        document = yaml.safe_load(Path(params_file).read_text()) or {}
        params = document["steering"]["ros__parameters"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        raise ValueError(f"{params_file}: no steering ros__parameters ({error})") from None
    return dict(params)


def iter_chunks(
    bag: BagReader,
    builder: InputBuilder,
    *,
    start_ns: int,
    end_ns: int,
    skipped: Skipped,
    progress: bool,
    chunk_topic: str = RECORD_TOPIC,
    chunk_types: Collection[str] = (RECORD_TOPICS[RECORD_TOPIC],),
) -> Iterator[Chunk]:
    """Logged chunks in ``[start_ns, end_ns]`` with their rebuilt observation and reference.

    Samples from before ``start_ns`` (up to the buffer) still serve chunks inside the range.
    ``chunk_types``: the message types ``chunk_topic`` may hold. A topic recorded with another
    type than expected (the inputs' too) is a BagError, before anything is read as that type.
    """
    from tqdm import tqdm

    from frs_control.messages import stamp_to_ns
    from frs_steering.adapters import ObservationError

    streams = builder.topics()
    instruction = ""
    topics = [JOINTS_TOPIC, *streams, INSTRUCTION_TOPIC, chunk_topic]
    bag.check_types(
        {
            JOINTS_TOPIC: [RECORD_TOPICS[JOINTS_TOPIC]],
            **{topic: [kind] for topic, kind in observed_topic_types(builder.adapter).items()},
            INSTRUCTION_TOPIC: [RECORD_TOPICS[INSTRUCTION_TOPIC]],
            chunk_topic: chunk_types,
        }
    )
    total = sum(bag.count(t) for t in topics)
    bar = tqdm(total=total, unit="msg", desc="replay", disable=not progress, file=sys.stderr)
    lookback = start_ns - 60 * 1_000_000_000
    waiting: deque[tuple[int, Any, str]] = deque()  # (log time, record, its instruction)

    def resolve(log_ns: int, record: Any, text: str) -> Chunk | None:
        """The record with its rebuilt observation and reference, or None (reason in skipped)."""
        is_record = hasattr(record, "scene_stamp")  # else a plain ActionChunk
        stamp = stamp_to_ns(record.header.stamp)
        used = None
        if is_record and len(record.input_topics) == len(record.input_stamps):
            used = {
                streams[topic.strip("/")]: stamp_to_ns(used_stamp)
                for topic, used_stamp in zip(record.input_topics, record.input_stamps, strict=True)
                if topic.strip("/") in streams
            }
        try:
            joints, samples = builder.inputs.match(stamp, builder.tolerance_ns, used=used)
        except ObservationError:
            skipped.add("observation not in the bag (joint_states or an input dropped)")
            return None
        if joints.stamp_ns != stamp:
            skipped.add("observation not in the bag (joint_states or an input dropped)")
            return None
        try:
            observation = builder.adapter.observation(
                joints, samples, builder.instruction(text), text
            )
            reference = None
            if is_record:
                reference = builder.adapter.layout.reference(
                    builder.policy.spec, builder.settings(record), record.reference, observation
                )
        except ValueError as error:
            skipped.add(f"cannot rebuild inputs: {error}")
            return None
        return Chunk(log_ns, record, observation, reference)

    def due(now_ns: int | None) -> Iterator[Chunk]:
        """The waiting records whose inputs had their time to arrive (all of them at the end)."""
        while waiting and (now_ns is None or waiting[0][0] + INPUT_LATENESS_NS <= now_ns):
            chunk = resolve(*waiting.popleft())
            if chunk is not None:
                yield chunk

    read_until = end_ns + INPUT_LATENESS_NS
    for item in bag.messages(topics, max(bag.start_ns, lookback), read_until):
        bar.update(1)
        yield from due(item.log_ns)
        msg = item.msg
        if item.topic == JOINTS_TOPIC:
            builder.inputs.add_joints(msg)
        elif item.topic in streams:
            try:
                builder.inputs.add(streams[item.topic], msg)
            except ObservationError:
                continue
        elif item.topic == INSTRUCTION_TOPIC:
            instruction = msg.data
        elif start_ns <= item.log_ns <= end_ns:
            text = (getattr(msg, "instruction", "") or "") or instruction
            waiting.append((item.log_ns, msg, text))
    yield from due(None)
    bar.close()


# ---------------------------------------------------------------------------- running methods


@dataclass
class MethodRun:
    """Per-chunk outputs of one method spec."""

    spec: MethodSpec
    refined: list[np.ndarray] = field(default_factory=list)  # [H, num_real] real units
    logged: list[np.ndarray] = field(default_factory=list)  # [H, num_real] logged refined
    cosine: list[float] = field(default_factory=list)
    noise_rms: list[float] = field(default_factory=list)
    log_density: list[float] = field(default_factory=list)
    round_trip: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)


def run_spec(policy: Any, spec: MethodSpec, chunk: Chunk, gripper_index: int | None) -> Any:
    """``steer`` one logged chunk with ``spec``; the SteerResult, bounded as the node bounds it."""
    import torch

    from frs_steering.observation import method_and_params
    from frs_steering.steer import steer
    from frs_steering.steering_goals import bound_output

    record = chunk.record
    if spec.method is None:
        method, params = method_and_params(
            record.method,
            defer=bool(record.reference.defer),
            noise_scale=float(record.noise_scale),
            partial_time=float(record.partial_time),
            num_samples=int(record.num_samples),
        )
        steps, solver = int(record.num_steps) or None, record.solver or "euler"
    else:
        method, params = spec.method, dict(spec.params)
        if record.reference.defer:
            method, params = "base", {}  # as the node does: the policy acts on its own
        steps = spec.num_steps if spec.num_steps is not None else (int(record.num_steps) or None)
        solver = spec.solver or record.solver or "euler"
    seed = int(record.seed) if spec.seed is None else spec.seed
    result = steer(
        policy,
        chunk.reference.chunk,
        observation=chunk.observation.policy_input,
        method=method,
        params=params,
        mask=chunk.reference.mask,
        reference_normalized=chunk.reference.normalized,
        generator=torch.Generator().manual_seed(seed),
        num_steps=steps,
        solver=solver,
        include_base_sample=bool(record.include_unsteered),
        round_trip=True,
    )
    return bound_output(result, gripper_index)


def _first(value: Any) -> float:
    return float("nan") if value is None else float(value[0])


def collect(run: MethodRun, result: Any, chunk: Chunk, spec_real_dims: list[int]) -> None:
    """Add one chunk's metrics to ``run``."""
    from frs_control.messages import chunk_from_msg
    from frs_steering.observation import reference_cosine

    logged = chunk_from_msg(chunk.record.refined, "record.refined")
    logged = logged[:, spec_real_dims] if logged.shape[1] > len(spec_real_dims) else logged
    run.logged.append(logged.astype(np.float64))
    run.refined.append(result.chunk_real[0].detach().cpu().numpy().astype(np.float64))
    has_reference = chunk.reference.real is not None
    run.cosine.append(
        reference_cosine(result.chunk[0], result.reference[0], result.steered[0])
        if has_reference
        else float("nan")
    )
    diag = result.diagnostics
    run.noise_rms.append(_first(diag.noise_rms))
    run.log_density.append(_first(diag.noise_log_density))
    run.round_trip.append(_first(diag.round_trip_error))
    run.latency_ms.append(diag.timings["total"] * 1e3)


def _nanmean(values: Sequence[float]) -> float | None:
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    return float(array.mean()) if array.size else None


def summarize_run(run: MethodRun, dim_names: Sequence[str]) -> dict:
    """Aggregate metrics of one method spec (JSON-friendly; None where undefined)."""
    error = np.stack(run.refined) - np.stack(run.logged)  # [N, H, D]
    latency = np.asarray(run.latency_ms)
    return {
        "label": run.spec.label,
        "chunks": int(error.shape[0]),
        "rms_error": float(np.sqrt(np.mean(error**2))),
        "max_abs_error": float(np.abs(error).max()),
        "mae_per_dim": dict(zip(dim_names, np.abs(error).mean(axis=(0, 1)).tolist(), strict=True)),
        "mae_per_step": np.abs(error).mean(axis=(0, 2)).tolist(),
        "reference_cosine": _nanmean(run.cosine),
        "noise_norm_ratio": _nanmean(run.noise_rms),
        "noise_log_density": _nanmean(run.log_density),
        "round_trip_error": _nanmean(run.round_trip),
        "latency_ms_median": float(np.median(latency)),
        "latency_ms_p90": float(np.percentile(latency, 90)),
    }


# ---------------------------------------------------------------------------- outputs


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def write_report(out: Path, summary: dict, runs: list[MethodRun], dim_names: list[str]) -> None:
    """``report.md``, ``report.png`` and ``metrics.json`` into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = summary["methods"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(dim_names))
    for i, m in enumerate(methods):
        axes[0, 0].bar(x + i * width, list(m["mae_per_dim"].values()), width, label=m["label"])
        axes[0, 1].plot(np.arange(1, len(m["mae_per_step"]) + 1), m["mae_per_step"], "o-")
    axes[0, 0].set_xticks(x + 0.4 - width / 2, dim_names)
    axes[0, 0].set_title("|refined - logged| per dim (real units)")
    axes[0, 0].legend(fontsize=8)
    axes[0, 1].set_title("|refined - logged| per chunk step")
    axes[0, 1].set_xlabel("row")
    labels = [r.spec.label for r in runs]
    cos = [np.asarray(r.cosine)[np.isfinite(r.cosine)] for r in runs]
    axes[1, 0].boxplot(cos, tick_labels=labels)
    axes[1, 0].set_title("reference-to-refined cosine (steered elements)")
    axes[1, 1].boxplot([r.latency_ms for r in runs], tick_labels=labels)
    axes[1, 1].set_title("latency per chunk (ms, steer call)")
    for ax in axes.flat:
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"bag replay: {summary['bag_name']}, {summary['chunks']} chunks")
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=90)
    plt.close(fig)

    lines = [
        "# Bag replay report",
        "",
        f"- bag: `{summary['bag_name']}` ({summary['bag_messages']} messages, "
        f"{summary['bag_duration_s']:.1f} s); range {summary['range_s'][0]:.2f}-"
        f"{summary['range_s'][1]:.2f} s",
        f"- chunks replayed: {summary['chunks']}; skipped: {summary['skipped']}",
        f"- checkpoint: `{summary['checkpoint']}` (weights SHA-256 "
        f"{'matches' if summary['checkpoint_matches'] else 'DIFFERS from'} the recording)",
        f"- logged methods: {summary['logged_methods']}; logged node latency median "
        f"{_fmt(summary['logged_total_ms_median'], 1)} ms",
        "",
        "Errors compare each re-computed refined chunk with the refined chunk the steering node "
        "logged (and the controller executed), in real units (m, rad per row; gripper 0..1).",
        "",
        "| method | chunks | RMS error | max abs error | cosine to reference | noise norm ratio "
        "| noise log-density | round-trip error | latency median / p90 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in methods:
        lines.append(
            f"| `{m['label']}` | {m['chunks']} | {_fmt(m['rms_error'])} | "
            f"{_fmt(m['max_abs_error'])} | {_fmt(m['reference_cosine'], 3)} | "
            f"{_fmt(m['noise_norm_ratio'], 3)} | {_fmt(m['noise_log_density'], 1)} | "
            f"{_fmt(m['round_trip_error'])} | {_fmt(m['latency_ms_median'], 1)} / "
            f"{_fmt(m['latency_ms_p90'], 1)} |"
        )
    lines += ["", "Mean absolute error per dim:", ""]
    lines.append("| method | " + " | ".join(dim_names) + " |")
    lines.append("| --- |" + " ---: |" * len(dim_names))
    for m in methods:
        values = " | ".join(_fmt(v) for v in m["mae_per_dim"].values())
        lines.append(f"| `{m['label']}` | {values} |")
    steps = len(methods[0]["mae_per_step"]) if methods else 0
    lines += ["", "Mean absolute error per chunk step (row):", ""]
    lines.append("| method | " + " | ".join(str(i + 1) for i in range(steps)) + " |")
    lines.append("| --- |" + " ---: |" * steps)
    for m in methods:
        lines.append(f"| `{m['label']}` | " + " | ".join(_fmt(v) for v in m["mae_per_step"]) + " |")
    lines += ["", "![per-dim and per-step error, cosine, latency](report.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")


def _to_bag_msg(msg: Any, msgtype: str) -> Any:
    """An rclpy message as the rosbags object of the same type (for BagWriter.write)."""
    from rclpy.serialization import serialize_message

    from frs_bringup.bags import typestore

    return typestore().deserialize_cdr(serialize_message(msg), msgtype)


def replay_topics(label: str) -> tuple[str, str]:
    """Output-bag topics of one method spec's refined chunks and markers."""
    safe = "".join(c if c.isalnum() else "_" for c in label).strip("_")
    return f"/frs/replay/{safe}/refined", f"/frs/replay/{safe}/markers"


def write_output_bag(
    path: Path, bag: BagReader, window: tuple[int, int], extra: list[tuple[str, str, int, Any]]
) -> None:
    """The input messages in ``window`` plus ``extra`` (topic, type, log ns, rclpy msg)."""
    with BagWriter(path) as writer:
        pending = sorted(extra, key=lambda e: e[2])
        for topic, msgtype, _, _ in pending:
            writer.add_topic(topic, msgtype)
        index = 0
        for _, connection, log_ns, data in bag.raw_messages(None, *window):
            while index < len(pending) and pending[index][2] <= log_ns:
                topic, msgtype, t, msg = pending[index]
                writer.write(topic, t, _to_bag_msg(msg, msgtype))
                index += 1
            digest = getattr(connection, "digest", None)
            msgdef = getattr(connection.msgdef, "data", None) if connection.msgdef else None
            rihs = digest if digest and str(digest).startswith("RIHS01_") else None
            writer.add_topic(connection.topic, connection.msgtype, msgdef=msgdef, rihs01=rihs)
            writer.write_raw(connection.topic, log_ns, data)
        for topic, msgtype, t, msg in pending[index:]:
            writer.write(topic, t, _to_bag_msg(msg, msgtype))


# ---------------------------------------------------------------------------- CLI


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bag", type=Path, required=True, help="rosbag2 directory or file")
    parser.add_argument("--out", type=Path, required=True, help="report directory (created)")
    parser.add_argument(
        "--methods", nargs="+", default=["logged", "frs", "base"], help="method specs"
    )
    parser.add_argument("--checkpoint", default="", help="policy checkpoint (default: shipped)")
    add_params_file_argument(parser)
    parser.add_argument("--start", type=float, default=None, help="s after the bag's start")
    parser.add_argument("--end", type=float, default=None, help="s after the bag's start")
    parser.add_argument(
        "--remap", nargs="*", default=[], metavar="OLD:=NEW", help="bag topic -> expected name"
    )
    parser.add_argument("--no-bag", action="store_true", help="skip the output bag")
    parser.add_argument("--torch-threads", type=int, default=1, help="as the node (default 1)")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None)
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    return parser.parse_args(argv)


def replay(args: argparse.Namespace) -> dict:
    """Run the replay; returns the summary. BagError/ValueError on unusable input; outputs
    are written only after every chunk replayed."""
    specs = [parse_method(text) for text in args.methods]
    if len({s.label for s in specs}) != len(specs):
        raise ValueError(f"duplicate method specs in {args.methods}")
    remap = parse_remaps(args.remap)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    with BagReader(args.bag, remap=remap) as bag:
        import torch

        from frs_control.messages import chunk_to_msg, ns_to_stamp
        from frs_steering.checkpoint import load_policy
        from frs_steering.package_data import resolve_checkpoint
        from frs_steering.ros_messages import path_markers
        from frs_steering.steer import available_methods
        from frs_steering.steering_goals import weights_sha256

        for spec in specs:
            if spec.method is not None and spec.method not in available_methods():
                raise ValueError(
                    f"unknown method {spec.method!r}; available: {list(available_methods())}"
                )
        torch.set_num_threads(args.torch_threads)
        params = steering_parameters(args.params_file)
        checkpoint = str(resolve_checkpoint(args.checkpoint or str(params.get("checkpoint", ""))))
        policy = load_policy(checkpoint)
        sha = weights_sha256(checkpoint)
        spec_real = list(policy.spec.real_dims)
        builder = InputBuilder(policy, params)
        required = (JOINTS_TOPIC, *builder.topics(), RECORD_TOPIC)
        bag.require(required, why="the steering node's records and the robot observation")
        window = bag.time_window(args.start, args.end)
        runs = [MethodRun(spec) for spec in specs]
        skipped = Skipped()
        extra: list[tuple[str, str, int, Any]] = []
        logged_methods: dict[str, int] = {}
        logged_ms: list[float] = []
        shas: set[str] = set()
        dim_names: list[str] = []
        for chunk in iter_chunks(
            bag, builder, start_ns=window[0], end_ns=window[1], skipped=skipped, progress=progress
        ):
            record = chunk.record
            logged_methods[record.method] = logged_methods.get(record.method, 0) + 1
            logged_ms.append(float(record.diagnostics.total_ms))
            shas.add(record.checkpoint_sha256)
            names = list(record.refined.dim_names)
            dim_names = [names[i] for i in spec_real] if len(names) > len(spec_real) else names
            stamp = ns_to_stamp(chunk.observation.stamp_ns)
            for index, run in enumerate(runs):
                result = run_spec(policy, run.spec, chunk, builder.adapter.layout.gripper_index())
                collect(run, result, chunk, spec_real)
                if args.no_bag:
                    continue
                refined_topic, markers_topic = replay_topics(run.spec.label)
                padded = np.zeros(policy.spec.chunk_shape, dtype=np.float32)
                padded[:, spec_real] = run.refined[-1]
                msg = chunk_to_msg(
                    padded,
                    stamp=stamp,
                    frame_id=record.refined.header.frame_id,
                    action_space=record.refined.action_space,
                    dt=record.refined.dt,
                    dim_names=list(record.refined.dim_names),
                    normalized=False,
                )
                extra.append((refined_topic, "frs_msgs/msg/ActionChunk", chunk.log_ns, msg))
                observation = chunk.observation
                path = None
                if observation.ee_position is not None:
                    path = builder.adapter.layout.translation_path(
                        observation.ee_position, result.chunk_real[0], observation.jacobian
                    )
                markers = path_markers(
                    {f"replay/{run.spec.label}": (path, COLOURS[index % len(COLOURS)])},
                    stamp=stamp,
                    frame_id=record.refined.header.frame_id,
                )
                extra.append(
                    (markers_topic, "visualization_msgs/msg/MarkerArray", chunk.log_ns, markers)
                )
        if not runs[0].refined:
            raise BagError(
                f"bag {args.bag}: no chunk could be replayed in the range "
                f"(skipped: {skipped.reasons or 'no frs/steering/record in range'})"
            )
        methods = [summarize_run(run, dim_names) for run in runs]
        summary = {
            "bag": str(args.bag),
            "bag_name": Path(args.bag).name,
            "bag_messages": bag.message_count,
            "bag_duration_s": (bag.end_ns - bag.start_ns) * 1e-9,
            "range_s": [(w - bag.start_ns) * 1e-9 for w in window],
            "chunks": methods[0]["chunks"],
            "skipped": skipped.reasons,
            "checkpoint": Path(checkpoint).name,
            "checkpoint_matches": shas <= {sha},
            "logged_methods": logged_methods,
            "logged_total_ms_median": float(np.median(logged_ms)),
            "dim_names": dim_names,
            "methods": methods,
        }
        # Everything computed: only now write, into a temporary directory moved into place.
        args.out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
        try:
            write_report(staging, summary, runs, dim_names)
            if not args.no_bag:
                write_output_bag(staging / "bag", bag, window, extra)
            args.out.mkdir(parents=True, exist_ok=True)
            for item in staging.iterdir():
                target = args.out / item.name
                if target.is_dir():
                    shutil.rmtree(target)
                item.replace(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    try:
        summary = replay(args)
    except (BagError, ValueError) as error:
        print(f"frs_bag_replay: error: {error}", file=sys.stderr)
        return 2
    for m in summary["methods"]:
        print(
            f"{m['label']:>28s}: {m['chunks']} chunks, RMS error vs logged {_fmt(m['rms_error'])}, "
            f"max {_fmt(m['max_abs_error'])}, cosine {_fmt(m['reference_cosine'], 3)}, "
            f"latency {_fmt(m['latency_ms_median'], 1)} ms"
        )
    print(f"report: {args.out / 'report.md'} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
