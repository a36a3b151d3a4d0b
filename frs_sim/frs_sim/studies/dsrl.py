"""DSRL and DSRL + FRS on one simulated task: SAC in the shipped generalist's noise space.

``python -m frs_sim.studies.dsrl --task <name> --env-steps 4000 --out build/dsrl`` trains,
with the same environment-step budget and seed, plain DSRL (random-noise warm-up) and
DSRL + FRS (an actor that starts as DSBC on the successful FRS rollouts of that task, a replay
buffer prefilled with them and a BC term toward their noises; rollouts come from ``--rollouts``,
e.g. the DSBC study's ``rollouts.safetensors``, or are collected here); both keep imitating their
own successful training episodes (``--self-imitation``); and DSRL + FRS around a cloned reasoner
(``dsrl_frs_reference``: a reference policy cloned from the task's rollouts proposes, FRS steers
toward its proposal, and the actor adds a bounded residual to that noise, starting at zero).
It evaluates the deterministic actor every ``--eval-every`` steps on the benchmark's evaluation
seeds, and writes ``results.json``, ``results.md``, ``curves.png`` and each final actor as a
noise-policy checkpoint (``results.json`` names the reference policy a residual adds to).
Methods may train in separate invocations (``--methods``) into one ``--out``: runs of the same
task, budget, seed and actor layout already there are kept beside the new ones.

One environment step = one chunk: the actor's noise vector (repeated over the chunk's rows,
fresh noise on padding dims) -> the generalist's forward pass -> ``execute_rows`` rows in
MuJoCo. Reward 1 on success (episode ends), 0 otherwise; a timeout truncates.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from frs_sim.env import ACTION_DIM, EnvConfig, FrankaTabletopEnv
from frs_sim.evaluate.cli import add_reasoner_arguments, reasoner_config
from frs_sim.evaluate.plots import pyplot
from frs_sim.evaluate.rollout import (
    FIRST_EXECUTE_ROWS,
    ChunkSituation,
    EvalConfig,
    Setting,
    episode_seed,
    generate_chunk,
    learner_episode_seed,
    make_jobs,
    policy_observation,
)
from frs_sim.evaluate.workers import (
    LookupEmbedding,
    embed_texts_subprocess,
    run_jobs,
    split_instructions,
    with_source_path,
)
from frs_sim.studies.dsbc import entity_layout
from frs_sim.tasks import TaskSpec, get_split
from frs_steering.checkpoint import load_policy
from frs_steering.learning.noise_data import NoiseDataset
from frs_steering.learning.noise_policy import (
    DsbcConfig,
    NoisePolicy,
    NoisePolicyConfig,
    save_noise_policy,
    train_dsbc,
)
from frs_steering.learning.noise_sac import (
    DsrlAgent,
    ReplayBuffer,
    SacConfig,
    flat_features,
    frs_transitions,
    sample_mixed,
)
from frs_steering.learning.reference_policy import (
    ReferenceCloningConfig,
    ReferencePolicy,
    ReferencePolicyConfig,
    load_checked_reference_policy,
    magnitude_levels,
    save_reference_policy,
    train_reference_policy,
)
from frs_steering.package_data import shipped_checkpoint
from frs_steering.reference import CartesianLayout
from frs_steering.steer import generate_from_noise
from frs_steering.train import flushing_denormals

TRAIN_SEED_BASE = 900_000  # training episodes: disjoint from demos, collection and evaluation
METHOD_LABELS = {
    "dsrl": "DSRL",
    "dsrl_frs": "DSRL + FRS",
    "dsrl_frs_reference": "DSRL + FRS (residual on the reference policy)",
}


class NoiseActionEnv:
    """A simulated task whose action is the flow policy's noise vector for the next chunk.

    With a ``reference`` policy (a clone of the reasoner) the action is a *residual*: it is
    added, on the actor's dims where FRS steers, to the noise FRS finds for the clone's
    proposal (as the steering node's ``residual_policy`` does), so a zero action executes FRS
    steered by the clone and the learner searches around it; where the clone defers the
    policy samples on its own.
    """

    def __init__(
        self,
        env: FrankaTabletopEnv,
        policy,
        task: TaskSpec,
        layout: NoisePolicyConfig,
        *,
        execute_rows: int = EvalConfig.execute_rows,
        num_steps: int | None = None,
        seed: int = 0,
        reference: ReferencePolicy | None = None,
    ) -> None:
        self.env, self.policy, self.task, self.layout = env, policy, task, layout
        self.execute_rows = execute_rows
        self.num_steps = num_steps or policy.spec.num_steps
        self.generator = torch.Generator().manual_seed(seed)
        self.observation: dict[str, torch.Tensor] | None = None
        self.reference = reference
        self.gripper_cmd = 0.0  # the last executed gripper command (the reference keeps it)
        self.cartesian = CartesianLayout(max_translation=EvalConfig.max_translation)

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        obs, _ = self.env.reset(seed=seed, options={"task": self.task})
        self.generator.manual_seed(seed)
        self.gripper_cmd = 0.0
        self.observation = policy_observation(obs, self.policy.config.state_dim)
        return {k: v[0].numpy() for k, v in self.observation.items()}

    def _steered_by_reference(self, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise, chunk) of FRS toward the reference policy's proposal, its noise moved by
        ``offsets`` where FRS steers (the steering node's ``residual_policy``); where the clone
        defers, the policy's own sample."""
        proposal = self.reference.propose(self.observation)
        with torch.inference_mode():
            cache = self.policy.encode(self.observation)
        situation = ChunkSituation(
            {}, self.observation, cache, self.task, self.gripper_cmd, self.cartesian, False
        )
        frs = Setting(
            "frs", params={"residual_policy": lambda _: offsets}, num_steps=self.num_steps
        )
        result, _, _ = generate_chunk(self.policy, proposal, frs, situation, self.generator)
        return result.noise.clone(), result.chunk.clone()

    def _noise_and_chunk(self, action: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``[1, horizon, dim]`` noise of the next chunk and the normalized chunk made from
        it: the action on the actor's dims (added to FRS's noise with a reference policy),
        fresh draws elsewhere."""
        if self.observation is None:
            raise RuntimeError("reset() first")
        spec = self.policy.spec
        vector = torch.as_tensor(np.asarray(action, np.float32)).reshape(1, -1)
        if self.reference is not None:
            return self._steered_by_reference(self.layout.compose(vector))  # zeros off its dims
        fresh = torch.randn((1, *spec.chunk_shape), generator=self.generator)
        noise = self.layout.compose(vector, fresh)
        noise = torch.where(spec.steerable_mask("cpu").expand_as(fresh), noise, fresh)
        chunk = generate_from_noise(
            self.policy, noise, observation=self.observation, num_steps=self.num_steps
        )
        return noise, chunk

    def noise_for(self, action: np.ndarray) -> torch.Tensor:
        """The noise :meth:`step` would generate its chunk from (it draws the same numbers)."""
        return self._noise_and_chunk(action)[0]

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool]:
        """(next observation, reward, terminated by success, truncated by timeout)."""
        spec = self.policy.spec
        _, chunk = self._noise_and_chunk(action)
        chunk_real = spec.from_policy(chunk)[0].numpy()
        rows = np.zeros((spec.horizon, ACTION_DIM))
        rows[:, : spec.num_real] = chunk_real
        rollout = self.env.execute_chunk(rows, n_rows=self.execute_rows)
        self.gripper_cmd = float(np.clip(rows[len(rollout.rewards) - 1, 6], 0.0, 1.0))
        self.observation = policy_observation(
            rollout.last_observation, self.policy.config.state_dim
        )
        success = bool(rollout.infos[-1]["success"])
        truncated = rollout.done and not success
        next_obs = {k: v[0].numpy() for k, v in self.observation.items()}
        return next_obs, float(success), success, truncated


def evaluate_actor(
    agent: DsrlAgent, env: NoiseActionEnv, task_index: int, episodes: int, seed: int = 0
) -> np.ndarray:
    """Per-episode success of the deterministic actor on the benchmark's evaluation seeds
    (episode ``i`` is the same scene in every call, so a prefix is a shorter evaluation)."""
    outcomes = np.zeros(episodes, bool)
    for episode in range(episodes):
        obs = env.reset(episode_seed(seed, task_index, episode))
        while True:
            action = agent.act(flat_features(obs, agent.keys), deterministic=True)
            obs, _, success, truncated = env.step(action)
            if success or truncated:
                outcomes[episode] = success
                break
    return outcomes


@flushing_denormals()
def train_dsrl(
    env: NoiseActionEnv,
    task_index: int,
    *,
    env_steps: int,
    prefill: NoiseDataset | None,
    bc_weight: float,
    warmup_steps: int = 300,
    pretrain_updates: int = 0,
    updates_per_step: int = 1,
    eval_every: int = 500,
    eval_episodes: int = 10,
    final_eval_episodes: int = 30,
    seed: int = 0,
    label: str = "DSRL",
    progress: bool = True,
    actor_lr: float = SacConfig.actor_lr,
    self_imitation: bool = False,
    dsbc_init: bool = False,
    critic_ensemble: int = 1,
    anchor_weight: float = 0.0,
    anchor_radius: float = 0.0,
    actor_from_critic: bool = True,
) -> tuple[DsrlAgent, dict[str, Any]]:
    """SAC for ``env_steps`` chunks.

    Plain DSRL starts with ``warmup_steps`` random N(0, I) noises (the base policy's own
    behaviour). With ``prefill`` (FRS rollouts of the task), the FRS transitions fill a
    second buffer that supplies part of every batch, successful FRS noises feed the BC term,
    and ``pretrain_updates`` gradient steps on them run before the first environment step
    (no warm-up: the actor already imitates FRS). The environment-step budget is the same.
    ``self_imitation``: every successful training episode's (features, noise) pairs join the
    BC set (weight ``bc_weight``), so the actor keeps what worked as the critic learns.
    ``dsbc_init`` (with ``prefill``): the actor starts as DSBC on the successful FRS chunks
    (:func:`train_dsbc`, its CPU seconds counted), and the pretraining updates then fit the
    critic while the actor learns from the BC term alone; ``anchor_weight`` > 0 then keeps
    the actor in a trust region around that DSBC start (no effect without one).
    ``critic_ensemble`` > 1: that many independent critics, RLPD-style.
    ``actor_from_critic`` False: the actor learns from the BC term alone throughout (online
    filtered self-imitation; the critic is still fitted, to compare like with like).
    An ``env`` with a reference policy makes the action a residual around FRS steered by it:
    the actor starts at zero (that FRS), its warm-up steps explore around it instead of
    drawing random noises, and it is scored at the start like a DSBC start.
    """
    torch.manual_seed(seed)
    obs = env.reset(TRAIN_SEED_BASE + seed * 10_000)
    start = time.process_time()
    residual = env.reference is not None
    dsbc_start = dsbc_init and prefill is not None and not residual
    if dsbc_start:
        actor, _ = train_dsbc(
            prefill.select(prefill.success), env.layout, DsbcConfig(seed=seed), progress=False
        )
    else:
        actor = NoisePolicy(env.layout, seed=seed)
    if residual:  # start exactly at FRS steered by the reference policy
        with torch.no_grad():
            actor.mean_head.weight.zero_()
            actor.mean_head.bias.zero_()
    config = SacConfig(
        bc_weight=bc_weight,
        actor_lr=actor_lr,
        critic_ensemble=critic_ensemble,
        anchor_weight=anchor_weight if dsbc_start else 0.0,
        anchor_radius=anchor_radius,
    )
    agent = DsrlAgent(actor, config, seed=seed)
    action_dim = env.layout.output_dim
    feature_dim = sum(env.layout.observation_dims.values())
    online = ReplayBuffer(feature_dim, action_dim, capacity=max(env_steps, 1))
    offline: ReplayBuffer | None = None
    seen = []
    if prefill is not None:
        transitions, bc_features, bc_actions = frs_transitions(prefill, actor)
        offline = ReplayBuffer(feature_dim, action_dim, capacity=max(len(transitions), 1))
        for transition in transitions:
            offline.add(*transition)
        agent.set_bc_data(bc_features, bc_actions)
        seen.append(np.stack([t[0] for t in transitions]))
        warmup_steps = 0

    def set_input_statistics() -> None:
        if not dsbc_start:  # a DSBC actor keeps the statistics it was trained with
            actor.set_flat_statistics(torch.from_numpy(np.concatenate(seen)))

    def batch() -> dict[str, torch.Tensor]:
        return sample_mixed(
            online, offline, config.batch_size, config.prefill_fraction, agent.generator
        )

    if offline is not None:
        set_input_statistics()
        for _ in tqdm(
            range(pretrain_updates), desc=f"{label} pretrain", leave=False, disable=not progress
        ):
            agent.update(batch(), actor_from_critic=not dsbc_start)
    rng = np.random.default_rng(seed)
    curve: list[dict[str, float]] = []
    start_rate = None
    if offline is not None or residual:  # where the actor starts, scored like the end
        outcomes = evaluate_actor(agent, env, task_index, max(eval_episodes, final_eval_episodes))
        start_rate = float(outcomes[:final_eval_episodes].mean())
        rate = float(outcomes[:eval_episodes].mean())
        curve.append(
            {"env_steps": 0, "success_rate": rate, "train_episodes": 0, "train_success_rate": 0.0}
        )
        obs = env.reset(TRAIN_SEED_BASE + seed * 10_000)
    episode, episode_return, returns = 0, 0.0, []
    episode_pairs: list[tuple[np.ndarray, np.ndarray]] = []
    features = flat_features(obs, agent.keys)
    bar = tqdm(range(env_steps), desc=label, unit="step", leave=False, disable=not progress)
    for step in bar:
        if step < warmup_steps and not residual:  # a residual explores around its start
            action = np.clip(rng.standard_normal(action_dim), -env.layout.bound, env.layout.bound)
        else:
            action = agent.act(features)
        if step < warmup_steps:
            seen.append(features[None])
        obs, reward, success, truncated = env.step(action)
        next_features = flat_features(obs, agent.keys)
        online.add(features, action, reward, next_features, success)
        episode_pairs.append((features, action))
        features = next_features
        episode_return += reward
        if success or truncated:
            if success and self_imitation:
                agent.add_bc_data(*map(np.stack, zip(*episode_pairs, strict=True)))
            episode_pairs = []
            returns.append(episode_return)
            episode += 1
            episode_return = 0.0
            obs = env.reset(TRAIN_SEED_BASE + seed * 10_000 + episode)
            features = flat_features(obs, agent.keys)
        if offline is None and step + 1 == min(warmup_steps, env_steps):
            set_input_statistics()
        if step + 1 >= warmup_steps and len(online) + len(offline or ()) >= config.batch_size:
            for _ in range(updates_per_step):
                metrics = agent.update(batch(), actor_from_critic=actor_from_critic)
            if step % 50 == 0:
                bar.set_postfix(q=f"{metrics['q']:.2f}", alpha=f"{metrics['alpha']:.3f}")
        if (step + 1) % eval_every == 0 or step + 1 == env_steps:
            rate = float(evaluate_actor(agent, env, task_index, eval_episodes).mean())
            curve.append(
                {
                    "env_steps": step + 1,
                    "success_rate": rate,
                    "train_episodes": episode,
                    "train_success_rate": float(np.mean(returns[-20:])) if returns else 0.0,
                }
            )
            if progress:
                bar.write(f"{label}: {step + 1} steps, eval success {rate:.0%}")
            obs = env.reset(TRAIN_SEED_BASE + seed * 10_000 + episode)  # eval moved the env
            features = flat_features(obs, agent.keys)
            episode_pairs = []  # that episode was cut short: neither a success nor kept
    cpu_seconds = time.process_time() - start
    final = float(evaluate_actor(agent, env, task_index, final_eval_episodes).mean())
    if progress:
        bar.write(f"{label}: final actor {final:.0%} over {final_eval_episodes} episodes")
    history = {
        "curve": curve,
        "final_success_rate": final,
        "start_success_rate": start_rate,  # the actor before its first environment step
        "final_eval_episodes": final_eval_episodes,
        "cpu_seconds": cpu_seconds,
        "train_episodes": episode,
        "train_successes": int(sum(returns)),
        "prefilled_transitions": len(offline) if offline is not None else 0,
        "pretrain_updates": pretrain_updates if offline is not None else 0,
        "self_imitation": self_imitation,
        "dsbc_init": dsbc_start,
        "residual_around_reference": residual,
        "actor_from_critic": actor_from_critic,
        "bc_pairs": agent.bc_size(),
        "config": asdict(config),
    }
    return agent, history


def plot_curves(runs: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for name, history in runs.items():
        steps = [p["env_steps"] for p in history["curve"]]
        rates = [100 * p["success_rate"] for p in history["curve"]]
        ax.plot(steps, rates, marker="o", label=name)
    ax.set_xlabel("environment steps (chunks)")
    ax.set_ylabel("eval success (%)")
    ax.set_ylim(-5, 105)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(shipped_checkpoint()))
    parser.add_argument("--split", default="novel")
    parser.add_argument("--task", required=True, help="task name in the split")
    parser.add_argument("--env-steps", type=int, default=10000)
    parser.add_argument("--eval-every", type=int, default=2000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--final-eval-episodes", type=int, default=60)
    parser.add_argument("--warmup-steps", type=int, default=300, help="random-noise steps first")
    parser.add_argument("--bc-weight", type=float, default=10.0)
    parser.add_argument(
        "--dsbc-init",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="DSRL + FRS: the actor starts as DSBC on the successful FRS chunks",
    )
    parser.add_argument(
        "--self-imitation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="successful training episodes join the BC set (both methods; plain DSRL's BC "
        "term then uses only its own successes)",
    )
    parser.add_argument("--actor-lr", type=float, default=3e-5)
    parser.add_argument(
        "--pretrain-updates", type=int, default=1000, help="DSRL + FRS: updates on FRS data first"
    )
    parser.add_argument("--updates-per-step", type=int, default=2)
    parser.add_argument(
        "--critic-ensemble",
        type=int,
        default=1,
        help="1: one twin-headed critic; N > 1: N independent critics (RLPD)",
    )
    parser.add_argument(
        "--anchor-weight",
        type=float,
        default=0.0,
        help="DSRL + FRS: trust-region weight toward the DSBC start's actions",
    )
    parser.add_argument(
        "--actor-from-critic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="off: the actor learns only from the BC term (filtered self-imitation, no SAC)",
    )
    parser.add_argument(
        "--anchor-radius",
        type=float,
        default=0.0,
        help="noise units each action element may move from the DSBC start unpenalized",
    )
    parser.add_argument("--rollouts", type=Path, help="FRS rollouts (NoiseDataset) to prefill")
    parser.add_argument(
        "--reference-policy",
        type=Path,
        help="dsrl_frs_reference: the reference policy FRS steers toward (default: trained here "
        "on the task's rollouts, written to OUT/TASK/reference_policy)",
    )
    parser.add_argument(
        "--reference-steps",
        type=int,
        default=10000,
        help="reference cloning's steps, all of them run (no CPU cap: the start must not depend "
        "on the machine's load)",
    )
    parser.add_argument(
        "--entity-input",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the reference policy trained here also reads out the task's cube and mat "
        "(as the DSBC study's --entity-input)",
    )
    parser.add_argument(
        "--magnitude-levels",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the reference policy trained here classifies the magnitude among the rollouts' "
        "levels (as the DSBC study's --magnitude-levels)",
    )
    parser.add_argument(
        "--residual-bound",
        type=float,
        default=1.0,
        help="dsrl_frs_reference: noise units the residual may add to each element",
    )
    parser.add_argument("--collect-episodes", type=int, default=30)
    parser.add_argument("--methods", default="dsrl,dsrl_frs")
    parser.add_argument("--target", choices=("chunk_mean", "full"), default="full")
    parser.add_argument(
        "--noise-dims", default="translation", help="action dims the actor sets (comma list)"
    )
    parser.add_argument(
        "--execute-rows",
        type=int,
        default=EvalConfig.execute_rows,
        help="rows of each chunk executed per environment step (FRS rollouts must match)",
    )
    add_reasoner_arguments(parser)  # the reasoner that steers the FRS prefill (without --rollouts)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="train the methods side by side")
    parser.add_argument("--out", type=Path, default=Path("build/dsrl"))
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHOD_LABELS))
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHOD_LABELS)}")
    if not (math.isfinite(args.residual_bound) and args.residual_bound > 0):
        parser.error("--residual-bound must be a positive number of noise units")
    if args.reference_steps < 1:
        parser.error("--reference-steps must be >= 1")
    torch.set_num_threads(1)
    tasks = get_split(args.split)
    names = [t.name for t in tasks]
    if args.task not in names:
        raise SystemExit(f"unknown task {args.task!r}; {args.split} has {names}")
    task_index = names.index(args.task)
    task = tasks[task_index]
    policy = load_policy(args.checkpoint)
    if "dsrl_frs_reference" in methods and args.reference_policy is not None:
        _checked_reference(args.reference_policy, policy)  # before anything is written
    out = args.out / args.task
    out.mkdir(parents=True, exist_ok=True)
    embed_fn = LookupEmbedding(embed_texts_subprocess(split_instructions(args.split)))

    prefill = None
    needs_rollouts = "dsrl_frs" in methods or (
        "dsrl_frs_reference" in methods and args.reference_policy is None
    )
    if needs_rollouts:
        if args.rollouts is not None:
            prefill = NoiseDataset.load(args.rollouts)
            rows = prefill.info.get("execute_rows", FIRST_EXECUTE_ROWS)
            if rows != args.execute_rows:
                raise SystemExit(
                    f"{args.rollouts} was collected re-planning every {rows} rows, not "
                    f"{args.execute_rows}: pass --execute-rows {rows} or other rollouts"
                )
            keep = task_mask(prefill, task, embed_fn)
            prefill = prefill.select(keep)
        else:
            from frs_sim.studies.dsbc import episodes_to_dataset

            jobs = make_jobs(
                [Setting("frs", split=args.split)],
                args.collect_episodes,
                [0],
                [args.task],
                env_seed=learner_episode_seed,
            )
            results = run_jobs(
                jobs,
                checkpoint=args.checkpoint,
                embed_fn=embed_fn,
                config=EvalConfig(execute_rows=args.execute_rows, reasoner=reasoner_config(args)),
                collect=True,
            )
            info = {"source": "frs_rollouts", "task": args.task, "execute_rows": args.execute_rows}
            prefill = episodes_to_dataset(results, info)
        print(
            f"FRS prefill: {len(prefill)} chunks, {prefill.episodes()} episodes, "
            f"{float(prefill.success.float().mean()):.0%} of chunks from successful ones"
        )

    spec = policy.spec
    noise_dims = (
        CartesianLayout().translation
        if args.noise_dims == "translation"
        else tuple(int(d) for d in args.noise_dims.split(","))
    )
    layout = NoisePolicyConfig(
        observation_dims={
            "state": policy.config.state_dim,
            "instruction": policy.config.instruction_dim,
        },
        horizon=spec.horizon,
        dim=spec.dim,
        target=args.target,
        noise_dims=tuple(noise_dims),
    )
    reference_path, reference_training = args.reference_policy, None
    if "dsrl_frs_reference" in methods:
        if reference_path is None:
            if prefill.proposals is None:
                raise SystemExit(f"{args.rollouts} holds no proposals to clone a reference from")
            reference_path, reference_training = _train_task_reference(
                prefill,
                ReferencePolicyConfig(
                    prefill.observation_dims,
                    entities=entity_layout() if args.entity_input else None,
                    magnitude_levels=magnitude_levels(prefill) if args.magnitude_levels else None,
                ),
                ReferenceCloningConfig(
                    steps=args.reference_steps, seed=args.seed, max_seconds=math.inf
                ),
                out,
            )
    options = {**vars(args), "reference_policy": str(reference_path or "")}
    jobs = [
        (options, method, layout, embed_fn, prefill if method == "dsrl_frs" else None)
        for method in methods
    ]
    if args.workers > 1 and len(jobs) > 1:
        os.environ["PYTHONPATH"] = with_source_path(os.environ)["PYTHONPATH"]
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(args.workers, len(jobs))) as pool:
            outcomes = pool.map(_train_method, jobs, chunksize=1)
    else:
        outcomes = [_train_method(job) for job in jobs]
    command = " ".join(["python -m frs_sim.studies.dsrl", *(argv or sys.argv[1:])])
    document = {
        "layout": layout.to_dict(),
        "task": args.task,
        "split": args.split,
        "env_steps": args.env_steps,
        "execute_rows": args.execute_rows,
        "seed": args.seed,
    }
    runs = _comparable_runs(out / "results.json", document)
    for method, (label, history, actor) in zip(methods, outcomes, strict=True):
        save_noise_policy(actor, out / method)
        if method == "dsrl_frs_reference":
            history["reference_policy"] = str(reference_path)
            history["residual_bound"] = args.residual_bound
            if reference_training is not None:  # trained here: its CPU is part of the learner's
                history["reference_steps"] = reference_training["steps"]
                history["reference_cpu_seconds"] = reference_training["cpu_seconds"]
                history["cpu_seconds"] += reference_training["cpu_seconds"]
        runs[label] = {"command": command, **history}
    document["runs"] = runs
    document["rows"] = result_rows(runs, args.split, args.task)
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    plot_curves(runs, out / "curves.png", f"{args.task}: SAC in noise space")
    lines = [
        "| method | final actor success | at the start, same episodes | episodes | curve (eval "
        f"every {args.eval_every} steps, {args.eval_episodes} episodes) | CPU s | train episodes |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for label, history in runs.items():
        rates = " ".join(f"{100 * p['success_rate']:.0f}" for p in history["curve"])
        start = history.get("start_success_rate")
        lines.append(
            f"| {label} | {100 * history['final_success_rate']:.0f}% | "
            f"{'-' if start is None else f'{100 * start:.0f}%'} | "
            f"{history['final_eval_episodes']} | {rates} | {history['cpu_seconds']:.0f} | "
            f"{history['train_episodes']} |"
        )
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(
        f"Task {args.task}, {args.env_steps} env steps of {args.execute_rows} rows, "
        f"seed {args.seed}.\n\n" + table
    )
    print(table)
    return 0


def result_rows(
    runs: Mapping[str, Mapping[str, Any]], split: str, task: str
) -> list[dict[str, Any]]:
    """The final actors' scores as the benchmark's rows (split, method, episodes, successes,
    success_rate), so every study's ``results.json`` reads alike."""
    rows = []
    for label, history in runs.items():
        episodes = int(history["final_eval_episodes"])
        rate = float(history["final_success_rate"])
        rows.append(
            {
                "split": split,
                "task": task,
                "method": label,
                "episodes": episodes,
                "successes": round(rate * episodes),
                "success_rate": rate,
            }
        )
    return rows


def _comparable_runs(path: Path, setting: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Runs an earlier invocation wrote to ``path`` for the same task, budget, seed and actor
    layout (methods may train in separate invocations); none if anything differs."""
    if not path.is_file():
        return {}
    try:
        earlier = json.loads(path.read_text())
    except ValueError:
        return {}
    if not isinstance(earlier, dict) or any(earlier.get(k) != v for k, v in setting.items()):
        return {}
    runs = earlier.get("runs")
    if not isinstance(runs, dict):
        return {}
    # files written before runs carried their own command name the invocation at the top
    return {label: {"command": earlier.get("command", ""), **run} for label, run in runs.items()}


def _train_method(job: tuple) -> tuple[str, dict[str, Any], NoisePolicy]:
    """Train one method (``dsrl`` or ``dsrl_frs``) as the CLI configured it (pool worker)."""
    options, method, layout, embed_fn, prefill = job
    torch.set_num_threads(1)
    tasks = get_split(options["split"])
    task_index = [t.name for t in tasks].index(options["task"])
    policy = load_policy(options["checkpoint"])
    reference = None
    if method == "dsrl_frs_reference":
        reference = _checked_reference(Path(options["reference_policy"]), policy)
        layout = replace(layout, bound=options["residual_bound"])
    env = NoiseActionEnv(
        FrankaTabletopEnv(tasks=options["split"], config=EnvConfig(), embed_fn=embed_fn),
        policy,
        tasks[task_index],
        layout,
        execute_rows=options["execute_rows"],
        seed=options["seed"],
        reference=reference,
    )
    label = METHOD_LABELS[method]
    agent, history = train_dsrl(
        env,
        task_index,
        env_steps=options["env_steps"],
        prefill=prefill,
        bc_weight=options["bc_weight"]
        if method == "dsrl_frs" or options["self_imitation"]
        else 0.0,
        self_imitation=options["self_imitation"],
        dsbc_init=options["dsbc_init"],
        critic_ensemble=options["critic_ensemble"],
        anchor_weight=options["anchor_weight"],
        anchor_radius=options["anchor_radius"],
        actor_from_critic=options["actor_from_critic"],
        warmup_steps=options["warmup_steps"],
        actor_lr=options["actor_lr"],
        pretrain_updates=options["pretrain_updates"],
        updates_per_step=options["updates_per_step"],
        eval_every=options["eval_every"],
        eval_episodes=options["eval_episodes"],
        final_eval_episodes=options["final_eval_episodes"],
        seed=options["seed"],
        label=label,
    )
    return label, history, agent.actor


def _checked_reference(path: Path, policy) -> ReferencePolicy:
    """The reference policy at ``path`` for ``policy``, or a usage error naming what is wrong."""
    try:
        return load_checked_reference_policy(path, policy)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--reference-policy {path}: {error}") from None


def _train_task_reference(
    rollouts: NoiseDataset,
    network: ReferencePolicyConfig,
    config: ReferenceCloningConfig,
    out: Path,
) -> tuple[Path, dict[str, float]]:
    """A reference policy cloned from every chunk of the task's rollouts (the DSBC study's
    recipe), saved under ``out``; returns its path, steps and CPU seconds."""
    net, history = train_reference_policy(rollouts, network, config, progress=False)
    path = save_reference_policy(net, out / "reference_policy")
    print(f"reference policy: {history['steps']} steps, {history['cpu_seconds']:.0f} s CPU")
    return path, {"steps": history["steps"], "cpu_seconds": float(history["cpu_seconds"])}


def task_mask(data: NoiseDataset, task: TaskSpec, embed_fn) -> torch.Tensor:
    """Samples of ``data`` whose instruction embedding is one of ``task``'s instructions."""
    wanted = torch.from_numpy(np.stack([embed_fn(t) for t in task.instructions()]))
    have = data.observations["instruction"].float()
    distance = torch.cdist(have, torch.clamp(wanted, -1.0, 1.0))
    return distance.min(1).values < 1e-4


if __name__ == "__main__":
    raise SystemExit(main())
