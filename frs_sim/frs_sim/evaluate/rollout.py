"""One closed-loop episode of the simulated benchmark under one steering setting.

Every chunk: observation -> policy encode (once) -> scripted reasoner proposal -> on a deferral
the base policy samples the chunk; otherwise the proposal becomes a reference chunk in the
policy's normalized action space (:func:`frs_steering.reference.cartesian_reference`) and the
method under test (:func:`frs_steering.steer.steer`) turns it into the chunk -> the first
``execute_rows`` rows run in the environment -> repeat until success or timeout. A reasoner
slower than the re-planning (``reasoner_every`` > 1) answers every few chunks; the chunks
between are steered toward its last proposal, rebuilt from the current state.

Episodes use environment seeds ``10000 * (seed + 1) + 100 * task_index + episode`` (disjoint
from the demonstration seeds), the same for every method, so comparisons are paired.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from frs_sim.env import ACTION_DIM, EnvConfig, FrankaTabletopEnv, policy_state
from frs_sim.reasoner import ReasonerConfig, ScriptedReasoner
from frs_sim.tasks import TaskSpec, get_split
from frs_steering.reasoning import CoarseProposal
from frs_steering.reference import CartesianLayout, cartesian_reference
from frs_steering.steer import steer

METHODS = ("base", "direct", "partial_noising", "sample_rank", "frs")
REASONER_FREE_METHODS = ("base", "noise_policy")  # act from the observation alone
EmbedFn = Callable[[str], np.ndarray]


@dataclass(frozen=True)
class Setting:
    """One row of the comparison: a steering method with its parameters and integrator."""

    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    num_steps: int | None = None  # None: the policy's own K
    solver: str = "euler"
    split: str = "novel"
    tag: str = ""  # names a learned component, e.g. "DSBC" or "standard BC"
    temperature: float = 1.0  # scale of the policy's fresh noise draws (steer's temperature)
    # With ``collect``: store what this method (with the reasoner, same K and solver) would have
    # generated at each visited state instead of what was executed (DAgger-style labels).
    label_method: str = ""
    # A learned reasoner (``ReferencePolicy``: ``propose(policy observation)``) that proposes
    # instead of the scripted one; name it with ``tag``.
    proposer: Any = None

    def __post_init__(self) -> None:
        if self.label_method and self.uses_reasoner:
            # both would query the one reasoner per chunk and shift its random draws
            raise ValueError("label_method needs a method that acts without the reasoner")

    @property
    def label(self) -> str:
        if self.tag:
            details = [self.tag]
        elif self.method == "partial_noising":
            details = [f"noise {self.params['noise_level']:g}"]
        elif self.method == "sample_rank":
            details = [f"N={self.params['num_samples']}"]
        elif self.method == "frs":
            details = [self.solver, "K" if self.num_steps is None else f"K={self.num_steps}"]
        else:
            details = []
        if self.temperature != 1.0:
            details.append(f"temperature {self.temperature:g}")
        return f"{self.method} ({', '.join(details)})" if details else self.method

    @property
    def uses_reasoner(self) -> bool:
        return self.method not in REASONER_FREE_METHODS

    def to_dict(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            return value if isinstance(value, (int, float, str, bool)) else type(value).__name__

        params = {k: plain(v) for k, v in self.params.items()}
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields |= {
            "params": params,
            "proposer": None if self.proposer is None else plain(self.proposer),
        }
        return {**fields, "label": self.label}


#: The re-planning rate of the first generalist's benchmark: what a rollouts file that records no
#: ``execute_rows`` (written before the rate was recorded) was collected at.
FIRST_EXECUTE_ROWS = 5


@dataclass(frozen=True)
class EvalConfig:
    """What every episode shares (written to results.json)."""

    # Rows of each chunk executed before re-planning: 3 (0.3 s), the reasoner's rate at which the
    # shipped generalist was measured (the first generalist's benchmark executed 5).
    execute_rows: int = 3
    # The reasoner answers every ``reasoner_every`` chunks; the chunks between re-use its last
    # proposal (a reasoner slower than the policy's re-planning, as a VLM is).
    reasoner_every: int = 1
    reasoner: ReasonerConfig = ReasonerConfig()
    max_translation: float = 0.05  # metres per row for magnitude 1.0 ("more")
    env: EnvConfig = EnvConfig()
    tasks: tuple[str, ...] | None = None  # restrict to these task names (None: whole split)
    # Give the policy no instruction (the zero vector, its instruction-free input; meaningful for
    # a policy trained with instruction dropout): what the policy does on the reasoner alone.
    withhold_instruction: bool = False

    def __post_init__(self) -> None:
        if self.execute_rows < 1:
            raise ValueError(f"execute_rows must be >= 1, got {self.execute_rows}")
        if self.reasoner_every < 1:
            raise ValueError(f"reasoner_every must be >= 1, got {self.reasoner_every}")


def default_settings(
    methods: Sequence[str] = METHODS,
    noise_levels: Sequence[float] = (0.3, 0.5, 0.7),
    num_samples: Sequence[int] = (4, 16),
    frs_steps: Sequence[int] = (10, 5),
    frs_solvers: Sequence[str] = ("euler", "midpoint"),
    split: str = "novel",
    temperatures: Sequence[float] = (1.0,),
) -> list[Setting]:
    """The comparison grid of the issue (sweeps per baseline, FRS per K x solver), each
    setting at every sampling temperature."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    out: list[Setting] = []
    for method in METHODS:
        if method not in methods:
            continue
        if method == "partial_noising":
            out += [Setting(method, {"noise_level": float(n)}, split=split) for n in noise_levels]
        elif method == "sample_rank":
            out += [Setting(method, {"num_samples": int(n)}, split=split) for n in num_samples]
        elif method == "frs":
            out += [
                Setting(method, {}, num_steps=int(k), solver=s, split=split)
                for s in frs_solvers
                for k in frs_steps
            ]
        else:
            out.append(Setting(method, split=split))
    return [replace(s, temperature=float(t)) for s in out for t in temperatures]


#: Every evaluation episode's environment seed is at least this; training data stays below it
#: (``GeneralistRecipe.check_seeds``), so evaluation never replays a training layout.
EVAL_SEED_MIN = 10000


def episode_seed(seed: int, task_index: int, episode: int) -> int:
    """Environment seed of one evaluation episode: distinct per (seed, task, episode)."""
    if seed < 0 or not 0 <= task_index < 100 or not 0 <= episode < 100:
        raise ValueError(
            f"evaluation seed {seed} must be >= 0, task index {task_index} and episode "
            f"{episode} in 0..99 (seeds would repeat otherwise)"
        )
    return EVAL_SEED_MIN * (seed + 1) + 100 * task_index + episode


#: Rollouts a learner collects to train on (DSBC's FRS rollouts) use environment seeds in
#: [LEARNER_SEED_MIN, EVAL_SEED_MIN): training layouts, never an evaluation one, and above the
#: shipped generalist recipes' demonstrations (seeds 0..5999).
LEARNER_SEED_MIN = 6000
#: Collection seed blocks of training rollouts (each up to 100 episodes per task).
LEARNER_BLOCKS = (0, 1, 2, 3)


def learner_episode_seed(seed: int, task_index: int, episode: int) -> int:
    """Environment seed of one training rollout of collection ``seed`` (a LEARNER_BLOCKS one)."""
    if seed not in LEARNER_BLOCKS or not 0 <= task_index < 10 or not 0 <= episode < 100:
        raise ValueError(
            f"collection seed {seed} must be in {LEARNER_BLOCKS}, task index {task_index} in "
            f"0..9 and episode {episode} in 0..99 (seeds would reach the evaluation range "
            "otherwise)"
        )
    return LEARNER_SEED_MIN + 1000 * seed + 100 * task_index + episode


def make_jobs(
    settings: Sequence[Setting],
    episodes_per_task: int,
    seeds: Sequence[int],
    tasks: Sequence[str] | None = None,
    *,
    env_seed: Callable[[int, int, int], int] = episode_seed,
) -> list[tuple[Setting, TaskSpec, int]]:
    """(setting, task, env seed) for every episode; ``tasks`` filters by task name;
    ``env_seed`` (seed, task index, episode) -> environment seed: evaluation seeds by default,
    :func:`learner_episode_seed` for training rollouts."""
    jobs = []
    for setting in settings:
        for task_index, task in enumerate(get_split(setting.split)):
            if tasks is not None and task.name not in tasks:
                continue
            for seed in seeds:
                for episode in range(episodes_per_task):
                    jobs.append((setting, task, env_seed(seed, task_index, episode)))
    return jobs


# ------------------------------------------------------------------------------ episodes


@dataclass
class ChunkRecord:
    """One chunk of a recorded episode (positions in the base frame, metres)."""

    ee_start: list[float]
    executed: list[list[float]]  # EE positions after each executed row
    deferred: bool
    reference: list[list[float]] | None = None  # per-row translation of the reference
    refined: list[list[float]] | None = None  # per-row translation of the chunk sent
    unsteered: list[list[float]] | None = None  # per-row translation of an unsteered sample


@dataclass
class EpisodeResult:
    setting: str
    task: str
    seed: int
    success: bool
    steps: int
    chunks: int
    deferred_chunks: int
    seconds: float
    instruction: str = ""  # as the episode phrased its task (which template or vocabulary)
    record: list[ChunkRecord] | None = None
    objects: dict[str, list[float]] | None = None
    samples: list[ChunkSample] | None = None


@dataclass
class ChunkSample:
    """What one chunk was computed from and with: the training data of noise policies."""

    observation: dict[str, np.ndarray]  # the policy observation (unbatched)
    noise: np.ndarray  # [horizon, dim] noise the chunk was generated from (policy space)
    steered: np.ndarray  # [horizon, dim] bool: from steering rather than a fresh draw
    chunk: np.ndarray  # [horizon, dim] the generated chunk (normalized, padded)
    proposal: CoarseProposal | None = None  # what the reasoner proposed (None: not asked)


def policy_observation(obs: Mapping[str, Any], state_dim: int) -> dict[str, torch.Tensor]:
    """The batch-of-one policy input of an environment observation, for a policy whose state
    is ``state_dim`` floats (:func:`frs_sim.env.policy_state`)."""
    state = policy_state(np.asarray(obs["state"], dtype=np.float32), state_dim)
    return {
        "state": torch.as_tensor(state).unsqueeze(0),
        "instruction": torch.as_tensor(
            np.asarray(obs["instruction_embedding"], dtype=np.float32)
        ).unsqueeze(0),
    }


@dataclass(frozen=True)
class ChunkSituation:
    """What one chunk is generated from (the observation and the episode's state)."""

    obs: Mapping[str, Any]
    policy_obs: dict[str, torch.Tensor]
    cache: Any
    task: TaskSpec
    gripper_cmd: float
    layout: CartesianLayout
    record: bool


def generate_chunk(
    policy, proposal: CoarseProposal | None, setting: Setting, at: ChunkSituation, draws
) -> tuple[Any, Any, bool]:
    """(steering result, reference or None, deferred) of ``setting`` for one chunk, steered
    by the reasoner's ``proposal`` (None for a method that acts without the reasoner)."""
    spec = policy.spec
    if proposal is None or proposal.defer:
        reasoner_free = not setting.uses_reasoner
        result = steer(
            policy,
            torch.zeros(spec.chunk_shape),
            observation=at.policy_obs,
            cache=at.cache,
            method=setting.method if reasoner_free else "base",
            params=setting.params if reasoner_free else None,
            reference_normalized=True,
            generator=draws,
            include_base_sample=False,
            temperature=setting.temperature,
        )
        return result, None, proposal is not None
    ref = cartesian_reference(spec, at.layout, proposal, current_gripper=at.gripper_cmd)
    result = steer(
        policy,
        ref.chunk,
        observation=at.policy_obs,  # read by methods that need more than the cache
        cache=at.cache,
        method=setting.method,
        params=setting.params,
        mask=ref.mask,
        reference_normalized=True,
        generator=draws,
        num_steps=setting.num_steps,
        solver=setting.solver,
        include_base_sample=at.record,
        temperature=setting.temperature,
    )
    return result, ref, False


def run_episode(
    env: FrankaTabletopEnv,
    policy,
    reasoner: ScriptedReasoner,
    task: TaskSpec,
    setting: Setting,
    seed: int,
    config: EvalConfig = EvalConfig(),
    record: bool = False,
    collect: bool = False,
) -> EpisodeResult:
    """One closed-loop episode of ``task`` under ``setting`` (deterministic given ``seed``).

    ``record`` keeps end-effector paths for plots; ``collect`` keeps a :class:`ChunkSample`
    per chunk (observation, noise, generated chunk) for training noise policies.
    """
    start = time.perf_counter()
    spec = policy.spec
    layout = CartesianLayout(max_translation=config.max_translation)
    obs, _ = env.reset(seed=seed, options={"task": task})
    instruction = str(obs["instruction"])
    reasoner.reset(seed)
    generator = torch.Generator().manual_seed(seed)
    gripper_cmd = 0.0
    steps = chunks = deferred = 0
    records: list[ChunkRecord] = []
    samples: list[ChunkSample] = []
    objects = None
    if record:
        objects = {"cube": obs["object_pos"][task.object_index].tolist()}
        if task.target_index is not None:
            objects["mat"] = obs["target_pos"][task.target_index].tolist()
        objects["other_cubes"] = [
            p.tolist() for i, p in enumerate(obs["object_pos"]) if i != task.object_index
        ]
        objects["other_mats"] = [
            p.tolist() for i, p in enumerate(obs["target_pos"]) if i != task.target_index
        ]
    labeller = None
    if collect and setting.label_method:
        labeller = replace(setting, method=setting.label_method, params={}, label_method="")
        label_generator = torch.Generator().manual_seed(seed + 1)  # acting draws stay as they are
    success = False
    proposal: CoarseProposal | None = None
    while True:
        policy_obs = policy_observation(obs, policy.config.state_dim)
        with torch.inference_mode():
            cache = policy.encode(policy_obs)

        if setting.uses_reasoner and chunks % config.reasoner_every == 0:
            if setting.proposer is not None:
                proposal = setting.proposer.propose(policy_obs)
            else:
                proposal = reasoner.propose_for(obs, task)
        situation = ChunkSituation(obs, policy_obs, cache, task, gripper_cmd, layout, record)
        result, ref, was_deferred = generate_chunk(policy, proposal, setting, situation, generator)
        deferred += was_deferred
        label, label_ref, label_proposal = result, ref, proposal
        if labeller is not None:  # the acting setting never asks the reasoner (Setting checks)
            label_proposal = reasoner.propose_for(obs, task)
            label, label_ref, _ = generate_chunk(
                policy, label_proposal, labeller, situation, label_generator
            )
        if collect and label.noise is not None:
            samples.append(
                ChunkSample(
                    observation={k: v[0].numpy() for k, v in policy_obs.items()},
                    noise=label.noise[0].numpy(),
                    steered=(label.steered[0] & (label_ref is not None)).numpy(),
                    chunk=label.chunk[0].numpy(),
                    proposal=label_proposal,
                )
            )
        rows = np.zeros((spec.horizon, ACTION_DIM))
        rows[:, : spec.num_real] = result.chunk_real[0].numpy()
        ee_start = np.asarray(obs["ee_pos"], dtype=float)
        rollout = env.execute_chunk(rows, n_rows=config.execute_rows)
        executed = len(rollout.rewards)
        gripper_cmd = float(np.clip(rows[executed - 1, 6], 0.0, 1.0))
        steps += executed
        chunks += 1
        obs = rollout.last_observation
        if record:
            entry = ChunkRecord(
                ee_start=ee_start.tolist(),
                executed=[np.asarray(o["ee_pos"], float).tolist() for o in rollout.observations],
                deferred=ref is None,
            )
            if ref is not None:
                entry.reference = ref.real[:, :3].tolist()
                entry.refined = result.chunk_real[0, :, :3].tolist()
                if result.base_chunk_real is not None:
                    entry.unsteered = result.base_chunk_real[0, :, :3].tolist()
            records.append(entry)
        if rollout.done:
            success = bool(rollout.infos[-1]["success"])
            break
    return EpisodeResult(
        setting=setting.label,
        task=task.name,
        seed=seed,
        success=success,
        steps=steps,
        chunks=chunks,
        deferred_chunks=deferred,
        seconds=time.perf_counter() - start,
        instruction=instruction,
        record=records if record else None,
        objects=objects,
        samples=samples if collect else None,
    )
