"""DSBC on the simulated benchmark: clone FRS's noises into a noise policy, compare with BC.

``python -m frs_sim.studies.dsbc --out build/dsbc`` runs the whole study on the novel split:

1. **collect**: closed-loop FRS rollouts with the scripted reasoner on *training* seeds
   (disjoint from the evaluation seeds); every chunk's observation, noise and generated chunk
   go into a :class:`~frs_steering.learning.noise_data.NoiseDataset` (``rollouts.safetensors``).
2. **train**: DSBC, a noise policy obs -> chunk-averaged noise (bounded ``5 tanh``), on the
   chunks of successful rollouts, inside a CPU-time budget; and standard BC, a flow policy of
   about the same size trained on the *actions* of the same chunks, with the same budget.
   With ``--dagger-episodes-per-task``, one DAgger round first: a DSBC trained on part of the
   budget acts on unused training seeds, FRS labels every state it visits, and the final DSBC
   trains on both (measured: no gain, docs/learning.md). Reference cloning, a reference policy
   obs -> the reasoner's coarse proposal, trains on every chunk's recorded proposal with the
   same budget (:mod:`frs_steering.learning.reference_policy`). A learned reversal, a noise
   policy (obs, the commanded reference and its one-step reversal) -> the noise FRS's reversal
   finds, trains on every steered chunk in what the budget leaves after the clone: behind the
   clone the two are DSBC through the cloned proposal.
3. **evaluate** on the evaluation seeds (the same as ``frs_sim.evaluate``): zero-shot
   FRS, DSBC (noise policy -> generalist, no reasoner), FRS steered by the reference policy's
   proposals (no reasoner), the learned reversal with the scripted reasoner and behind the
   reference policy, standard BC and the base policy.

Writes ``results.json``, ``results.md``, ``learning_curves.png``, ``success.png``, the trained
``dsbc/`` noise policy (a checkpoint the steering node loads as ``noise_policy``), the
``reference_policy/`` and the ``learned_reversal/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frs_sim.env import ACTION_DIM, N_OBJECTS, N_TARGETS, STATE_LAYOUT, EnvConfig
from frs_sim.evaluate.cli import add_reasoner_arguments, reasoner_config
from frs_sim.evaluate.plots import plot_success, pyplot
from frs_sim.evaluate.rollout import (
    FIRST_EXECUTE_ROWS,
    LEARNER_BLOCKS,
    EpisodeResult,
    EvalConfig,
    Setting,
    learner_episode_seed,
    make_jobs,
)
from frs_sim.evaluate.statistics import markdown_table, summarize
from frs_sim.evaluate.workers import (
    LookupEmbedding,
    embed_texts_subprocess,
    run_jobs,
    split_instructions,
)
from frs_steering.checkpoint import load_policy, save_policy
from frs_steering.learning.noise_data import NoiseDataset, concatenate
from frs_steering.learning.noise_policy import (
    OBJECTIVES,
    DsbcConfig,
    NoisePolicy,
    check_objective,
    default_config,
    reversal_dataset,
    save_noise_policy,
    train_dsbc,
)
from frs_steering.learning.observation_input import EntityLayout
from frs_steering.learning.reference_policy import (
    HEADS,
    ReferenceCloningConfig,
    ReferencePolicyConfig,
    decode_proposal,
    encode_proposal,
    magnitude_levels,
    proposal_accuracy,
    save_reference_policy,
    train_reference_policy,
)
from frs_steering.model import FlowMatchingPolicy, FlowPolicyConfig
from frs_steering.package_data import shipped_checkpoint
from frs_steering.reference import CartesianLayout, cartesian_reference
from frs_steering.train import train_flow_policy

#: DSBC's candidate noises per observation with ``--objective mixture``: with plain MLPs a
#: mixture of 4 lifted DSBC by 9-16 points over one regression on each training seed, 16 added
#: nothing; with the entity read-out one regression (the default objective) is 3-8 points
#: better on each (docs/learning.md).
MIXTURE_COMPONENTS = 4
#: DSBC's optimizer steps by default: with the entity read-out, 6000 steps solve 70.6 % of the
#: novel split on the shipped generalist where 3000 solve 58.9 % and 10 000 68.9 %
#: (docs/learning.md); about 35 s of CPU.
DSBC_STEPS = 6000
#: Reference cloning's optimizer steps and learning rate in this study: 2500 steps at 3e-3 agree
#: with the reasoner on held-out episodes as often as 5000 at 1e-3 (all axis signs 77.1 vs
#: 76.1 %) in half the CPU, which leaves the learned reversal room inside DSBC's one-minute
#: budget (docs/learning.md).
REFERENCE_STEPS = 2500
REFERENCE_LEARNING_RATE = 3e-3
#: The learned reversal's width, depth, steps and learning rate: 384 units, 3 layers, 3000
#: steps at 3e-3 (26-45 s of CPU on the hosts measured; where the budget ends it first, its
#: schedule anneals by the budget, which cost nothing measurable at 72 % of the steps, and
#: results.json records the steps run). On held-out episodes its noises are about half as far
#: from FRS's as those of 512 units, 2 layers, 4000 steps at 1e-3, and reading the one-step
#: reversal (``--reversal-one-step``) takes another 30 % off (docs/learning.md).
REVERSAL_HIDDEN = 384
REVERSAL_DEPTH = 3
REVERSAL_STEPS = 3000
REVERSAL_LEARNING_RATE = 3e-3


def entity_layout() -> EntityLayout:
    """Where the EE, the cubes and the mats sit in the tabletop ``state``: what a learner's
    entity read-out picks the instruction's cube and mat from (``--entity-input``)."""
    return EntityLayout(
        anchor=STATE_LAYOUT["ee_pos"].start,
        objects=(STATE_LAYOUT["object_pos"].start, N_OBJECTS),
        targets=(STATE_LAYOUT["target_pos"].start, N_TARGETS),
    )


class ScaledOutputNoisePolicy(NoisePolicy):
    """A trained noise policy with its outputs multiplied by ``scale``: measures how much of
    DSBC's gap to FRS is the regression's shrunken noise (``--output-scales``)."""

    def __init__(self, net: NoisePolicy, scale: float) -> None:
        super().__init__(net.config, seed=None)
        self.load_state_dict(net.state_dict())
        self.scale = float(scale)

    def squash(self, pre: torch.Tensor) -> torch.Tensor:
        return self.scale * super().squash(pre)


def episodes_to_dataset(results: Sequence[EpisodeResult], info: dict[str, Any]) -> NoiseDataset:
    """Stack the per-chunk samples of collected episodes (episode id = position in results);
    the reasoner's proposals too when every chunk has one."""
    observations: dict[str, list[np.ndarray]] = {}
    noise, steered, chunks, episode, success, proposals = [], [], [], [], [], []
    for index, result in enumerate(results):
        if result.samples is None:
            raise ValueError("episodes were run without collect=True")
        for sample in result.samples:
            for key, value in sample.observation.items():
                observations.setdefault(key, []).append(value)
            noise.append(sample.noise)
            steered.append(sample.steered)
            chunks.append(sample.chunk)
            proposals.append(None if sample.proposal is None else encode_proposal(sample.proposal))
            episode.append(index)
            success.append(result.success)
    if not noise:
        raise ValueError("the episodes produced no chunks with a noise")
    return NoiseDataset(
        observations={k: torch.from_numpy(np.stack(v)) for k, v in observations.items()},
        noise=torch.from_numpy(np.stack(noise)).float(),
        steered=torch.from_numpy(np.stack(steered)),
        episode=torch.tensor(episode, dtype=torch.long),
        success=torch.tensor(success, dtype=torch.bool),
        info=info,
        chunks=torch.from_numpy(np.stack(chunks)).float(),
        proposals=None
        if any(p is None for p in proposals)
        else torch.from_numpy(np.stack(proposals)),
    )


def bc_policy_like(generalist_config: FlowPolicyConfig, target_params: int) -> FlowMatchingPolicy:
    """A flow policy on the generalist's action space with about ``target_params`` weights."""
    best = None
    for width in range(16, 257, 8):
        config = replace(
            generalist_config,
            width=width,
            depth=2,
            encoder_depth=1,
            encoder_width=width,
            input_normalization=True,
        )
        count = sum(p.numel() for p in FlowMatchingPolicy(config, seed=None).parameters())
        if best is None or abs(count - target_params) < abs(best[1] - target_params):
            best = (config, count)
    return FlowMatchingPolicy(best[0], seed=0)


def train_standard_bc(
    generalist_config: FlowPolicyConfig,
    data: NoiseDataset,
    target_params: int,
    *,
    steps: int,
    seed: int = 0,
    progress: bool = True,
) -> tuple[FlowMatchingPolicy, dict[str, Any]]:
    """Flow-matching BC on the chunks of ``data`` (normalized space), same budget as DSBC."""
    if data.chunks is None:
        raise ValueError("the dataset has no chunks to clone")
    policy = bc_policy_like(generalist_config, target_params)
    observations = {k: v.float() for k, v in data.observations.items()}
    policy.set_input_statistics(observations)
    start = time.process_time()
    losses = train_flow_policy(
        policy,
        observations,
        data.chunks,
        steps=steps,
        batch_size=256,
        learning_rate=2e-3,
        seed=seed,
        actions_normalized=True,
        progress=progress,
    )
    return policy, {"loss": losses, "cpu_seconds": time.process_time() - start, "steps": steps}


def plot_learning_curves(histories: dict[str, dict[str, Any]], path: Path) -> Path:
    """Loss per step of each learner (log scale), with its CPU time in the legend."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(histories), figsize=(5 * len(histories), 3.4), dpi=110)
    for ax, (name, history) in zip(np.atleast_1d(axes), histories.items(), strict=True):
        loss = np.asarray(history["loss"])
        window = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(loss, color="0.8", lw=0.6)
        ax.plot(np.arange(len(smooth)) + window - 1, smooth, color="C0")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"{name}: {history['cpu_seconds']:.1f} s CPU, {len(loss)} steps")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def collect_rollouts(
    setting: Setting,
    episodes_per_task: int,
    seed_blocks: Sequence[int],
    args: argparse.Namespace,
    embed_fn: LookupEmbedding,
    config: EvalConfig,
    tasks: tuple[str, ...] | None,
) -> list[EpisodeResult]:
    """Episodes of ``setting`` on training scenes (learner seed blocks), per-chunk samples kept."""
    jobs = make_jobs(
        [setting], episodes_per_task, seed_blocks, tasks, env_seed=learner_episode_seed
    )
    return run_jobs(
        jobs,
        checkpoint=args.checkpoint,
        embed_fn=embed_fn,
        config=config,
        workers=args.workers,
        collect=True,
    )


def dagger_round(
    data: NoiseDataset,
    net_config,
    dsbc_config: DsbcConfig,
    args: argparse.Namespace,
    frs: Setting,
    embed_fn: LookupEmbedding,
    config: EvalConfig,
    tasks: tuple[str, ...] | None,
) -> tuple[NoiseDataset, dict[str, Any]]:
    """Train a first DSBC on part of the budget, run it on fresh training scenes, label every
    state it visits with FRS's noise there, and return ``data`` plus those labels (and a summary
    with the first training's CPU seconds).

    Why: a learner cloned on FRS's own states may drift to states FRS never visited; the labels
    say what FRS would do from where DSBC actually goes (measured here: no gain).
    """
    first_config = replace(dsbc_config, max_seconds=args.cpu_budget * args.dagger_first_share)
    first, history = train_dsbc(data, net_config, first_config)
    acting = Setting(
        "noise_policy",
        {"noise_policy": first},
        num_steps=frs.num_steps,
        split=args.split,
        tag="DSBC, first round",
        label_method="frs",
    )
    start = time.perf_counter()
    # scenes the FRS rollouts did not use (learner_configs checked there is one)
    collect_seed = next(s for s in LEARNER_BLOCKS if s not in args.collect_seeds)
    episodes = args.dagger_episodes_per_task
    results = collect_rollouts(acting, episodes, [collect_seed], args, embed_fn, config, tasks)
    info = {
        "episodes": len(results),
        "first_dsbc_successes": sum(r.success for r in results),
        "collect_seed": collect_seed,
        "first_dsbc_cpu_seconds": history["cpu_seconds"],
        "seconds": time.perf_counter() - start,
    }
    labelled = episodes_to_dataset(results, {"source": "dagger_frs_labels", **info})
    labelled.save(args.out / "dagger.safetensors")
    info["chunks"] = len(labelled)
    print(
        f"DAgger: first DSBC succeeded {info['first_dsbc_successes']}/{len(results)}; "
        f"{len(labelled)} states labelled by FRS in {info['seconds']:.0f} s"
    )
    merged = concatenate([data, labelled], {**data.info, "dagger": info})
    return merged, info


def noise_dims(option: str) -> tuple[int, ...] | None:
    """``--noise-dims``: the Cartesian translation (what the reasoner's directions steer; the
    policy keeps its own gripper timing), ``steered`` (None: every dim steering acted on in the
    rollouts, the gripper too where the reasoner commanded it), or a comma list of dims."""
    if option == "translation":
        return tuple(CartesianLayout().translation)
    if option == "steered":
        return None
    try:
        dims = tuple(int(d) for d in option.split(","))
    except ValueError:
        raise ValueError(
            f"--noise-dims must be translation, steered or a comma list of dims, got {option!r}"
        ) from None
    if not dims or any(not 0 <= d < ACTION_DIM for d in dims) or len(set(dims)) != len(dims):
        raise ValueError(
            f"--noise-dims: distinct dims in [0, {ACTION_DIM}) expected, got {option!r}"
        )
    return dims


def learner_configs(
    args: argparse.Namespace,
) -> tuple[DsbcConfig, ReferenceCloningConfig | None]:
    """DSBC's and reference cloning's settings from the CLI (ValueError: impossible ones)."""
    if args.bc_steps < 1:
        raise ValueError(f"--bc-steps must be >= 1, got {args.bc_steps}")
    if not 0.0 < args.dagger_first_share < 1.0:
        raise ValueError(f"--dagger-first-share must be in (0, 1), got {args.dagger_first_share}")
    blocks = args.collect_seeds
    if not blocks or len(set(blocks)) != len(blocks) or not set(blocks) <= set(LEARNER_BLOCKS):
        raise ValueError(
            f"--collect-seeds: distinct blocks in {LEARNER_BLOCKS} expected, got {blocks}"
        )
    if args.dagger_episodes_per_task > 0 and set(blocks) == set(LEARNER_BLOCKS):
        raise ValueError("--dagger-episodes-per-task needs a block --collect-seeds leaves unused")
    noise_dims(args.noise_dims)  # raises on an unknown choice or dim
    check_objective(args.objective, args.components)
    if args.reversal_steps > 0:
        for flag, value in (("hidden", args.reversal_hidden), ("depth", args.reversal_depth)):
            if value < 1:
                raise ValueError(f"--reversal-{flag} must be >= 1, got {value}")
        DsbcConfig(steps=args.reversal_steps, learning_rate=args.reversal_learning_rate)
    dsbc_config = DsbcConfig(
        objective=args.objective, steps=args.dsbc_steps, max_seconds=args.cpu_budget, seed=args.seed
    )
    if args.reference_steps <= 0:
        return dsbc_config, None
    reference = ReferenceCloningConfig(
        steps=args.reference_steps,
        learning_rate=args.reference_learning_rate,
        max_seconds=args.cpu_budget,
        seed=args.seed,
    )
    return dsbc_config, reference


def training_record(net: torch.nn.Module, history: dict[str, Any]) -> dict[str, Any]:
    """What results.json keeps of one learner's training: size, CPU, steps, final loss (the
    mean of the last 50 steps), and the step from which the CPU budget paced its schedule."""
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "cpu_seconds": history["cpu_seconds"],
        "steps": history["steps"],
        "final_loss": float(np.mean(history["loss"][-50:])),
        "budget_paced_from": history.get("budget_paced_from"),
    }


def reference_cloning(
    rollouts: NoiseDataset, args: argparse.Namespace, config: ReferenceCloningConfig | None
) -> dict[str, Any] | None:
    """Train a reference policy on every chunk's recorded proposal (None: skipped, or the
    rollouts predate recorded proposals); held-out agreement from a model trained without a
    tenth of the episodes, then the final model on all of them."""
    if config is None:
        return None
    if rollouts.proposals is None:
        print("reference cloning skipped: these rollouts hold no proposals (--recollect)")
        return None
    held_out = rollouts.episode % 10 == 0
    entities = entity_layout() if args.entity_input else None
    network = ReferencePolicyConfig(
        rollouts.observation_dims,
        head=args.reference_head,
        entities=entities,
        magnitude_levels=magnitude_levels(rollouts) if args.magnitude_levels else None,
    )
    probe, _ = train_reference_policy(rollouts.select(~held_out), network, config)
    net, history = train_reference_policy(rollouts, network, config)
    save_reference_policy(net, args.out / "reference_policy")
    return {
        "net": net,
        "history": history,
        "training": asdict(config),
        "network": network.to_dict(),
        "chunks": len(rollouts),
        **training_record(net, history),
        "agreement_held_out_episodes": proposal_accuracy(probe, rollouts.select(held_out)),
        "agreement_training": proposal_accuracy(net, rollouts),
    }


def recorded_references(
    rollouts: NoiseDataset, spec: Any, layout: CartesianLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalized references ``[N, horizon, dim]`` FRS reversed in the rollouts and their
    commanded elements (none where the reasoner deferred), rebuilt from each recorded proposal
    and the gripper command then in force: the last executed gripper value of the episode's
    previous chunk (open at the start), which a kept gripper's reference carries."""
    if rollouts.chunks is None:
        raise ValueError("these rollouts hold no generated chunks: --recollect")
    executed = rollouts.info.get("execute_rows", FIRST_EXECUTE_ROWS)
    commands = spec.from_policy(rollouts.chunks.float())[:, executed - 1, layout.gripper]
    references = torch.zeros(len(rollouts), *spec.chunk_shape)
    commanded = torch.zeros(len(rollouts), *spec.chunk_shape, dtype=torch.bool)
    gripper = layout.gripper_open
    for index, row in enumerate(rollouts.proposals):
        if index == 0 or rollouts.episode[index] != rollouts.episode[index - 1]:
            gripper = layout.gripper_open
        proposal = decode_proposal(row)
        if not proposal.defer:
            reference = cartesian_reference(spec, layout, proposal, current_gripper=gripper)
            references[index], commanded[index] = reference.chunk, reference.mask
        gripper = float(commands[index].clamp(0.0, 1.0))
    return references, commanded


def train_learned_reversal(
    rollouts: NoiseDataset,
    generalist: FlowMatchingPolicy,
    args: argparse.Namespace,
    layout: CartesianLayout,
    clone_seconds: float = 0.0,
) -> dict[str, Any] | None:
    """A learned reversal (noise policy reading the commanded reference) fit to FRS's
    noises on every steered chunk of the rollouts (the reversal does not depend on the
    episode's outcome); None when skipped or the rollouts hold no proposals.

    It trains within what the CPU budget leaves after the clone (``clone_seconds``) and after
    computing its inputs (the policy embedding and, with ``--reversal-one-step``, the one-step
    reversals): behind the clone it is one learner, DSBC through the cloned proposal."""
    if args.reversal_steps <= 0 or rollouts.proposals is None:
        return None
    references, commanded = recorded_references(rollouts, generalist.spec, layout)
    steered = rollouts.steered.flatten(1).any(1) & commanded.flatten(1).any(1)
    start = time.process_time()
    data = reversal_dataset(
        rollouts.select(steered),
        generalist,
        references[steered],
        commanded[steered],
        one_step_reversal=args.reversal_one_step,
    )
    input_seconds = time.process_time() - start
    overrides = {"entities": entity_layout()} if args.entity_input else {}
    network = default_config(
        data, target="full", hidden=args.reversal_hidden, depth=args.reversal_depth, **overrides
    )
    training = DsbcConfig(
        steps=args.reversal_steps,
        learning_rate=args.reversal_learning_rate,
        max_seconds=max(args.cpu_budget - clone_seconds - input_seconds, 0.0),
        seed=args.seed,
        steered_only=True,
    )
    net, history = train_dsbc(data, network, training)
    save_noise_policy(net, args.out / "learned_reversal")
    return {
        "net": net,
        "history": history,
        "training": asdict(training),
        "network": network.to_dict(),
        "chunks": len(data),
        "input_cpu_seconds": input_seconds,
        **training_record(net, history),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(shipped_checkpoint()))
    parser.add_argument("--split", default="novel")
    parser.add_argument("--out", type=Path, default=Path("build/dsbc"))
    parser.add_argument("--collect-episodes-per-task", type=int, default=100)
    parser.add_argument("--eval-episodes-per-task", type=int, default=10)
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--collect-seeds",
        type=int,
        nargs="+",
        default=list(LEARNER_BLOCKS),
        help="training rollouts' seed blocks (each 0..3, up to 100 episodes per task each; "
        "all four by default: the clone agrees with the reasoner more often with every block)",
    )
    parser.add_argument("--frs-steps", type=int, default=10, help="FRS Euler steps (K)")
    parser.add_argument("--dsbc-steps", type=int, default=DSBC_STEPS)
    parser.add_argument("--bc-steps", type=int, default=1100)
    parser.add_argument(
        "--reference-steps",
        type=int,
        default=REFERENCE_STEPS,
        help="reference cloning's optimizer steps (0: skip reference cloning)",
    )
    parser.add_argument("--reference-learning-rate", type=float, default=REFERENCE_LEARNING_RATE)
    parser.add_argument(
        "--reference-head",
        choices=HEADS,
        default=ReferencePolicyConfig.head,
        help="the reference policy's head: each field on its own, or the proposal's kind jointly",
    )
    parser.add_argument(
        "--reversal-steps",
        type=int,
        default=REVERSAL_STEPS,
        help="optimizer steps of the learned reversal (0: skip it)",
    )
    parser.add_argument("--reversal-hidden", type=int, default=REVERSAL_HIDDEN)
    parser.add_argument("--reversal-depth", type=int, default=REVERSAL_DEPTH)
    parser.add_argument("--reversal-learning-rate", type=float, default=REVERSAL_LEARNING_RATE)
    parser.add_argument(
        "--reversal-one-step",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the learned reversal also reads the reference's one-step reversal (one velocity "
        "call per chunk, in training and at run time)",
    )
    parser.add_argument("--cpu-budget", type=float, default=55.0, help="seconds per learner")
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="mse",
        help="DSBC's loss: one regression (mse), or a mixture of candidate noises and a "
        "classifier (mixture, the plain MLP's best)",
    )
    parser.add_argument(
        "--components",
        type=int,
        help=f"DSBC's candidate noises per observation (default {MIXTURE_COMPONENTS} with "
        "--objective mixture, else 1)",
    )
    parser.add_argument(
        "--output-scales",
        type=float,
        nargs="*",
        default=[],
        help="also evaluate DSBC with its outputs multiplied by each of these",
    )
    parser.add_argument("--target", choices=("chunk_mean", "full"), default="full")
    parser.add_argument(
        "--noise-dims",
        default="translation",
        help="action dims DSBC predicts: translation, steered (every dim steering acted on) or "
        "a comma list; the others take fresh noise",
    )
    parser.add_argument(
        "--defer-head",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="learn when the reasoner deferred (fresh noise there, as FRS does)",
    )
    parser.add_argument(
        "--entity-input",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="DSBC and the reference policy also read out the instruction's cube and mat "
        "(positions relative to the EE and to each other), learned from what the rollouts moved",
    )
    parser.add_argument(
        "--magnitude-levels",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the reference policy classifies the reasoner's magnitudes among the few levels "
        "the rollouts hold (--no-magnitude-levels: regresses them)",
    )
    parser.add_argument("--max-steps", type=int, default=EnvConfig().max_episode_steps)
    parser.add_argument(
        "--execute-rows",
        type=int,
        default=EvalConfig.execute_rows,
        help="rows of each chunk executed before re-planning (collection and evaluation)",
    )
    parser.add_argument("--tasks", default="", help="comma-separated task names (all: empty)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--recollect", action="store_true", help="ignore cached rollouts")
    parser.add_argument(
        "--dagger-episodes-per-task",
        type=int,
        default=0,
        help="one DAgger round: roll out a first DSBC, label its states with FRS, retrain (0: off)",
    )
    parser.add_argument(
        "--dagger-first-share",
        type=float,
        default=0.4,
        help="share of --cpu-budget the first DSBC gets (the final one gets the rest)",
    )
    add_reasoner_arguments(parser)
    args = parser.parse_args(argv)
    if args.components is None:
        args.components = MIXTURE_COMPONENTS if args.objective == "mixture" else 1
    try:  # impossible learner options are refused before minutes of rollouts
        dsbc_config, reference_config = learner_configs(args)
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    tasks = tuple(t for t in args.tasks.split(",") if t) or None
    config = EvalConfig(
        execute_rows=args.execute_rows,
        reasoner=reasoner_config(args),
        tasks=tasks,
        env=EnvConfig(max_episode_steps=args.max_steps),
    )
    embed_fn = LookupEmbedding(embed_texts_subprocess(split_instructions(args.split)))
    generalist = load_policy(args.checkpoint)
    frs = Setting("frs", num_steps=args.frs_steps, split=args.split)

    rollouts_path = args.out / "rollouts.safetensors"
    reasoner_info = json.loads(json.dumps(asdict(config.reasoner)))  # as the file stores it
    if rollouts_path.is_file() and not args.recollect:
        rollouts = NoiseDataset.load(rollouts_path)
        collected_by = rollouts.info.get("reasoner")
        if collected_by is not None and collected_by != reasoner_info:
            raise SystemExit(
                f"{rollouts_path} was collected with reasoner {collected_by}, not "
                f"{reasoner_info}: pass --recollect or another --out"
            )
        rows = rollouts.info.get("execute_rows", FIRST_EXECUTE_ROWS)
        if rows != config.execute_rows:
            raise SystemExit(
                f"{rollouts_path} was collected re-planning every {rows} rows, not "
                f"{config.execute_rows}: pass --recollect or another --out"
            )
        blocks = rollouts.info.get("seed", args.collect_seeds)
        if list(blocks) != list(args.collect_seeds):
            raise SystemExit(
                f"{rollouts_path} holds the rollouts of seed blocks {blocks}, not "
                f"{args.collect_seeds}: pass --collect-seeds {' '.join(map(str, blocks))}, "
                "--recollect or another --out"
            )
        print(f"reusing {rollouts_path}: {len(rollouts)} chunks, {rollouts.episodes()} episodes")
    else:
        start = time.perf_counter()
        episodes = args.collect_episodes_per_task
        results = collect_rollouts(frs, episodes, args.collect_seeds, args, embed_fn, config, tasks)
        info = {
            "source": "frs_rollouts",
            "checkpoint": str(args.checkpoint),
            "split": args.split,
            "method": frs.label,
            "reasoner": reasoner_info,
            "execute_rows": config.execute_rows,
            "seed": args.collect_seeds,
            "env_seeds": "learner_episode_seed (below the evaluation range)",
            "episodes": len(results),
            "successes": sum(r.success for r in results),
            "seconds": time.perf_counter() - start,
        }
        rollouts = episodes_to_dataset(results, info)
        rollouts.save(rollouts_path)
        print(
            f"collected {len(rollouts)} chunks from {len(results)} FRS episodes "
            f"({info['successes']} successful) in {info['seconds']:.0f} s"
        )
    successful = rollouts.select(rollouts.success)
    if len(successful) == 0:
        raise SystemExit("no successful FRS rollout to learn from")

    overrides = {"target": args.target, "defer_head": args.defer_head}
    if args.entity_input:
        overrides["entities"] = entity_layout()
    dims = noise_dims(args.noise_dims)
    if dims is not None:
        overrides["noise_dims"] = dims
    net_config = default_config(successful, components=args.components, **overrides)
    dagger_info = None
    if args.dagger_episodes_per_task > 0:
        successful, dagger_info = dagger_round(
            successful, net_config, dsbc_config, args, frs, embed_fn, config, tasks
        )
        first_cpu = dagger_info["first_dsbc_cpu_seconds"]
        dsbc_config = replace(dsbc_config, max_seconds=max(args.cpu_budget - first_cpu, 0.0))
    dsbc, dsbc_history = train_dsbc(successful, net_config, dsbc_config)
    if dagger_info is not None:  # the CPU of both DSBC trainings is the learner's cost
        dsbc_history["cpu_seconds"] += first_cpu
    save_noise_policy(dsbc, args.out / "dsbc")
    dsbc_params = sum(p.numel() for p in dsbc.parameters())
    bc, bc_history = train_standard_bc(
        generalist.config, successful, dsbc_params, steps=args.bc_steps, seed=args.seed
    )
    save_policy(bc, args.out / "standard_bc")
    bc_params = sum(p.numel() for p in bc.parameters())
    print(
        f"DSBC: {dsbc_params} params, {dsbc_history['cpu_seconds']:.1f} s CPU; "
        f"standard BC: {bc_params} params, {bc_history['cpu_seconds']:.1f} s CPU"
    )
    curves = {"DSBC (noise policy)": dsbc_history, "standard BC (flow policy)": bc_history}
    reference = reference_cloning(rollouts, args, reference_config)
    if reference is not None:
        curves["reference cloning (reference policy)"] = reference["history"]
    layout = CartesianLayout(max_translation=config.max_translation)
    clone_seconds = 0.0 if reference is None else reference["cpu_seconds"]
    reversal = train_learned_reversal(rollouts, generalist, args, layout, clone_seconds)
    if reversal is not None:
        curves["learned reversal (noise policy)"] = reversal["history"]
    plot_learning_curves(curves, args.out / "learning_curves.png")

    settings = [
        Setting("base", split=args.split),
        frs,
        Setting("noise_policy", {"noise_policy": dsbc}, split=args.split, tag="DSBC"),
    ]
    settings += [
        Setting(
            "noise_policy",
            {"noise_policy": ScaledOutputNoisePolicy(dsbc, scale)},
            split=args.split,
            tag=f"DSBC x{scale:g}",
        )
        for scale in args.output_scales
    ]
    if reference is not None:
        settings.append(replace(frs, tag="reference cloning", proposer=reference["net"]))
    if reversal is not None:
        learned = Setting(
            "learned_reversal",
            {"reversal": reversal["net"]},
            split=args.split,
            tag="learned reversal",
        )
        settings.append(learned)
        if reference is not None:
            tag = "reference cloning + learned reversal"
            settings.append(replace(learned, tag=tag, proposer=reference["net"]))
    bc_setting = Setting("base", split=args.split, tag="standard BC")
    jobs = make_jobs(settings, args.eval_episodes_per_task, args.eval_seeds, tasks)
    start = time.perf_counter()
    results = run_jobs(
        jobs, policy=generalist, embed_fn=embed_fn, config=config, workers=args.workers
    )
    results += run_jobs(
        make_jobs([bc_setting], args.eval_episodes_per_task, args.eval_seeds, tasks),
        policy=bc,
        embed_fn=embed_fn,
        config=config,
        workers=args.workers,
    )
    rows = summarize([*settings, bc_setting], results)
    by_label = {row["label"]: row["success_rate"] for row in rows}
    document = {
        "command": " ".join(["python -m frs_sim.studies.dsbc", *(argv or sys.argv[1:])]),
        "rollouts": rollouts.info | {"chunks": len(rollouts), "successful_chunks": len(successful)},
        "dsbc": {
            "config": net_config.to_dict(),
            "training": asdict(dsbc_config),
            **training_record(dsbc, dsbc_history),
        },
        "standard_bc": training_record(bc, bc_history),
        "reference_cloning": None
        if reference is None
        else {k: v for k, v in reference.items() if k not in ("net", "history")},
        "learned_reversal": None
        if reversal is None
        else {k: v for k, v in reversal.items() if k not in ("net", "history")},
        "dagger": dagger_info,
        "evaluation_seconds": time.perf_counter() - start,
        "rows": rows,
        "gaps": {
            "dsbc_minus_frs": by_label[settings[2].label] - by_label[frs.label],
            "dsbc_minus_standard_bc": by_label[settings[2].label] - by_label[bc_setting.label],
        }
        | {
            f"{s.tag.replace(' + ', '_').replace(' ', '_')}_minus_frs": by_label[s.label]
            - by_label[frs.label]
            for s in settings
            if s.tag
            in ("reference cloning", "learned reversal", "reference cloning + learned reversal")
        },
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    table = markdown_table(rows)
    header = (
        f"DSBC vs standard BC on the {args.split} split: {len(rollouts)} chunks from "
        f"{rollouts.info.get('episodes')} FRS rollouts (training seed "
        f"{rollouts.info.get('seed')}), "
        f"{len(successful)} chunks of successful ones used for training; evaluation "
        f"{args.eval_episodes_per_task} episodes per task and seed, evaluation seeds "
        f"{' '.join(map(str, args.eval_seeds))}.\n"
        f"DSBC {dsbc_params} params, {dsbc_history['cpu_seconds']:.1f} s CPU; standard BC "
        f"{bc_params} params, {bc_history['cpu_seconds']:.1f} s CPU"
        + (
            "."
            if reference is None
            else f"; reference cloning {reference['params']} params, "
            f"{reference['cpu_seconds']:.1f} s CPU, trained on all {reference['chunks']} chunks."
        )
        + (
            ""
            if reversal is None
            else f" Learned reversal {reversal['params']} params, {reversal['cpu_seconds']:.1f} s "
            f"CPU, trained on the {reversal['chunks']} steered chunks."
        )
        + "\n\n"
    )
    (args.out / "results.md").write_text(header + table)
    plot_success(rows, args.out / "success.png")
    print(header + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
