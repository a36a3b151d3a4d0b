"""Reverse the executed chunks of a bag into noise: an (observation, noise) dataset for DSBC.

``python -m frs_bringup.bag_noise --bag runs/demos --out data/demo_noise.safetensors``

Each executed chunk (default: the refined chunks on ``frs/steering/record``; or any
``frs_msgs/ActionChunk`` topic via ``--chunk-topic``, e.g. teleoperated chunks stamped with the
observation they were decided on) is put into the policy's normalized space and run backwards
through the flow ODE (FRS's reversal, same observation conditioning and steps) to the noise that
regenerates it. Real dims are reversed (``steered`` = True); padding dims get fresh N(0, I)
noise, as in FRS.

A steering record already holds the noise its refined chunk was generated from: the logged
call is re-run (method, seed and steps of the record, as ``bag_replay``'s ``logged``) and its
noise and steered mask are kept when a forward pass of that noise, with the export's steps and
solver, regenerates the executed chunk (``LOGGED_TOLERANCE``). That label is exact, where the
K-step reversal is not (a bimodal dim such as the gripper can land in the other mode), and a
deferred chunk stays a deferral (nothing steered) for DSBC's defer head. Otherwise (another
checkpoint or step count, ``--reverse``, or an ``ActionChunk`` topic) the chunk is reversed.

Episodes and their outcome come from ``frs/episode_status`` when recorded (otherwise one
episode, ``--success``). Written with :class:`frs_steering.learning.noise_data.NoiseDataset`;
``info`` holds where each label came from and the reconstruction error (executed chunk vs the
forward pass of its noise, gripper bounded as the node bounds it).
"""

from __future__ import annotations

import argparse
import bisect
import sys
from pathlib import Path
from typing import Any

import numpy as np

from frs_bringup.bag_replay import (
    JOINTS_TOPIC,
    RECORD_TOPIC,
    Skipped,
    add_params_file_argument,
    iter_chunks,
    steering_parameters,
)
from frs_bringup.bags import RECORD_TOPICS, BagError, BagReader, parse_remaps

STATUS_TOPIC = "frs/episode_status"
#: What ``--chunk-topic`` may hold: steering records, or plain (e.g. teleoperated) chunks.
CHUNK_TYPES = (RECORD_TOPICS[RECORD_TOPIC], "frs_msgs/msg/ActionChunk")
# Largest RMS (real units) between the executed chunk and the regenerated logged noise for that
# noise to be the label: float error only (re-runs reproduce logged chunks to ~1e-6).
LOGGED_TOLERANCE = 1e-4


def episode_outcomes(bag: BagReader, window: tuple[int, int]) -> tuple[list, list, dict]:
    """(log times, episode ids) of status messages and each episode's final success."""
    times, episodes, success = [], [], {}
    if bag.count(STATUS_TOPIC) == 0:
        return times, episodes, success
    bag.check_types({STATUS_TOPIC: [RECORD_TOPICS[STATUS_TOPIC]]})
    for item in bag.messages([STATUS_TOPIC], None, window[1]):
        times.append(item.log_ns)
        episodes.append(int(item.msg.episode))
        success[int(item.msg.episode)] = bool(item.msg.success) or success.get(
            int(item.msg.episode), False
        )
    return times, episodes, success


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bag", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help=".safetensors file to write")
    parser.add_argument("--chunk-topic", default=RECORD_TOPIC, help="SteeringRecord or ActionChunk")
    parser.add_argument("--checkpoint", default="", help="policy checkpoint (default: shipped)")
    add_params_file_argument(parser)
    parser.add_argument("--num-steps", type=int, default=0, help="0 = the policy's default")
    parser.add_argument("--solver", default="euler")
    parser.add_argument("--seed", type=int, default=0, help="seed of the padding dims' noise")
    parser.add_argument(
        "--reverse", action="store_true", help="reverse every chunk, even with a logged noise"
    )
    parser.add_argument("--success", action="store_true", help="mark chunks of unknown outcome")
    parser.add_argument("--only-success", action="store_true", help="keep successful episodes")
    parser.add_argument("--start", type=float, default=None, help="s after the bag's start")
    parser.add_argument("--end", type=float, default=None, help="s after the bag's start")
    parser.add_argument("--remap", nargs="*", default=[], metavar="OLD:=NEW")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None)
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    return parser.parse_args(argv)


def export(args: argparse.Namespace) -> dict:
    """Build and save the dataset; returns its ``info``. BagError/ValueError if unusable."""
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    with BagReader(args.bag, remap=parse_remaps(args.remap)) as bag:
        topic = args.chunk_topic.strip("/")

        import torch

        from frs_bringup.bag_replay import InputBuilder, MethodSpec, run_spec
        from frs_control.messages import chunk_from_msg
        from frs_steering.checkpoint import load_policy
        from frs_steering.learning.noise_data import NoiseDataset
        from frs_steering.learning.reference_policy import encode_proposal
        from frs_steering.observation import ObservationError
        from frs_steering.package_data import resolve_checkpoint
        from frs_steering.ros_messages import MessageError, proposal_from_msg
        from frs_steering.steer import generate_from_noise, steer
        from frs_steering.steering_goals import clip_gripper, weights_sha256

        torch.set_num_threads(1)
        params = steering_parameters(args.params_file)
        checkpoint = str(resolve_checkpoint(args.checkpoint or str(params.get("checkpoint", ""))))
        policy = load_policy(checkpoint)
        spec = policy.spec
        real_dims = list(spec.real_dims)
        builder = InputBuilder(policy, params)
        gripper_index = builder.adapter.layout.gripper_index()
        num_steps = args.num_steps or spec.num_steps

        def regenerate(noise: torch.Tensor, observation: dict) -> torch.Tensor:
            """The real-unit chunk the export's forward pass makes from ``noise``, bounded."""
            chunk = generate_from_noise(
                policy,
                noise[None],
                observation=observation,
                num_steps=num_steps,
                solver=args.solver,
            )
            return clip_gripper(spec.from_policy(chunk)[0], gripper_index)

        def recorded_proposal(record: Any) -> np.ndarray | None:
            """The reasoner's proposal a steering record was asked with (None: not a record,
            a full-chunk reference, or an unreadable one)."""
            reference = getattr(record, "reference", None)
            if reference is None or len(reference.chunk.data) or len(reference.mask):
                return None
            try:
                return encode_proposal(proposal_from_msg(reference))
            except (MessageError, ValueError):
                return None

        def rms(a: torch.Tensor, b: torch.Tensor) -> float:
            return float((a - b).pow(2).mean().sqrt())

        def logged_label(chunk: Any, executed: torch.Tensor) -> tuple | None:
            """(noise, steered, reconstruction RMS) of the logged call when its noise
            regenerates ``executed``."""
            if args.reverse or not hasattr(chunk.record, "refined"):
                return None
            try:
                result = run_spec(policy, MethodSpec("logged"), chunk, gripper_index)
            except (ValueError, ObservationError):
                return None
            if result.noise is None:
                return None
            noise = result.noise[0].clone()
            error = rms(regenerate(noise, chunk.observation.policy_input), executed)
            if error > LOGGED_TOLERANCE:
                return None
            # A base call (a deferral) used no reference: fresh noise everywhere, as rollouts
            # label it for DSBC's defer head.
            steered_mask = result.steered[0].clone()
            if chunk.record.method == "base":
                steered_mask.zero_()
            return noise, steered_mask, error

        bag.require([JOINTS_TOPIC, *builder.topics(), topic], why="executed chunks")
        window = bag.time_window(args.start, args.end)
        status_times, status_episodes, outcome = episode_outcomes(bag, window)
        generator = torch.Generator().manual_seed(args.seed)
        states, instructions, noises, steered, episodes, errors = [], [], [], [], [], []
        proposals: list[np.ndarray | None] = []
        sources = {"logged": 0, "reversed": 0}
        skipped = Skipped()
        for chunk in iter_chunks(
            bag,
            builder,
            start_ns=window[0],
            end_ns=window[1],
            skipped=skipped,
            progress=progress,
            chunk_topic=topic,
            chunk_types=CHUNK_TYPES,
        ):
            msg = chunk.record.refined if hasattr(chunk.record, "refined") else chunk.record
            try:
                rows = chunk_from_msg(msg, f"{topic} chunk")
            except ValueError as error:
                skipped.add(str(error))
                continue
            if msg.normalized or rows.shape[0] != spec.horizon:
                skipped.add(f"chunk is not a real-unit {spec.horizon}-row chunk")
                continue
            if rows.shape[1] == spec.dim and spec.has_padding:
                rows = rows[:, real_dims]
            if rows.shape[1] != spec.num_real:
                skipped.add(f"chunk has {rows.shape[1]} dims, the policy {spec.num_real}")
                continue
            executed = torch.from_numpy(rows.astype(np.float32))
            obs = chunk.observation.policy_input
            label = logged_label(chunk, executed)
            sources["reversed" if label is None else "logged"] += 1
            if label is None:
                result = steer(
                    policy,
                    executed,
                    observation=obs,
                    method="frs",
                    reference_normalized=False,
                    generator=generator,
                    num_steps=num_steps,
                    solver=args.solver,
                    include_base_sample=False,
                )
                noise = result.noise[0].clone()
                label = noise, result.steered[0].clone(), rms(regenerate(noise, obs), executed)
            noise, label_steered, error = label
            errors.append(error)
            noises.append(noise)
            steered.append(label_steered)
            proposals.append(recorded_proposal(chunk.record))
            states.append(obs["state"][0].float())
            if "instruction" in obs:
                instructions.append(obs["instruction"][0].float())
            index = bisect.bisect_right(status_times, chunk.log_ns) - 1
            episodes.append(status_episodes[index] if index >= 0 else 0)
        if not noises:
            raise BagError(
                f"bag {args.bag}: no executed chunk on {topic} could be reversed "
                f"(skipped: {skipped.reasons or 'none in range'})"
            )
        episode = torch.tensor(episodes, dtype=torch.int64)
        success = torch.tensor([outcome.get(e, args.success) for e in episodes], dtype=torch.bool)
        observations = {"state": torch.stack(states)}
        if instructions:
            observations["instruction"] = torch.stack(instructions)
        info = {
            "source": "bag_noise",
            "bag": str(args.bag),
            "chunk_topic": topic,
            "checkpoint_sha256": weights_sha256(checkpoint),
            "method": "logged_noise_or_frs_reversal",
            "solver": args.solver,
            "num_steps": num_steps,
            "chunks": len(noises),
            "labels": sources,
            "skipped": skipped.reasons,
            "reconstruction_rms_mean": float(np.mean(errors)),
            "reconstruction_rms_max": float(np.max(errors)),
        }
        dataset = NoiseDataset(
            observations=observations,
            noise=torch.stack(noises),
            steered=torch.stack(steered),
            episode=episode,
            success=success,
            info=info,
            proposals=None
            if any(p is None for p in proposals)
            else torch.from_numpy(np.stack(proposals)),
        )
        info["proposals"] = dataset.proposals is not None
        if args.only_success:
            dataset = dataset.select(dataset.success)
            if len(dataset) == 0:
                raise BagError(f"bag {args.bag}: no chunk from a successful episode")
        dataset.save(args.out)
        info["saved"] = len(dataset)
        info["episodes"] = dataset.episodes()
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        info = export(args)
    except (BagError, ValueError) as error:
        print(f"frs_bag_noise: error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {info['saved']} (observation, noise) pairs from {info['episodes']} episode(s) to "
        f"{args.out} (labels: {info['labels']['logged']} logged, {info['labels']['reversed']} "
        f"reversed); reconstruction RMS mean {info['reconstruction_rms_mean']:.2e}, max "
        f"{info['reconstruction_rms_max']:.2e} (real units)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
