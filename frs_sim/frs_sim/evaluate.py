"""Closed-loop evaluation of steering methods on the simulated benchmark.

Every chunk: observation -> policy encode (once) -> scripted reasoner proposal -> on a deferral
the base policy samples the chunk; otherwise the proposal becomes a reference chunk in the
policy's normalized action space (:func:`frs_steering.reference.cartesian_reference`) and the
method under test (:func:`frs_steering.steer.steer`) turns it into the chunk -> the first
``execute_rows`` rows run in the environment -> repeat until success or timeout.

``python -m frs_sim.evaluate --checkpoint frs_steering/checkpoints/generalist
--split novel --episodes-per-task 10 --seeds 0 --out build/eval`` compares base, direct,
partial noising (sweep of the noise level), sample-and-rank (sweep of N) and FRS (sweep of step
counts and solvers), plus a base-policy sanity row on the pretraining split, and writes
``results.json``, ``results.md`` (success with Wilson 95% intervals), ``success.png`` and
``episode.png`` (end-effector paths of one episode: executed FRS path with the reference
direction and an unsteered sample per chunk, and the unsteered base policy's own rollout).

Episodes use environment seeds ``10000 * (seed + 1) + 100 * task_index + episode`` (disjoint
from the demonstration seeds), the same for every method, so comparisons are paired.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from frs_sim.env import ACTION_DIM, EnvConfig, FrankaTabletopEnv
from frs_sim.reasoner import ReasonerConfig, ScriptedReasoner
from frs_sim.tasks import TaskSpec, get_split
from frs_steering.checkpoint import load_policy
from frs_steering.reference import CartesianLayout, cartesian_reference
from frs_steering.steer import steer

_SOURCE_ROOT = Path(__file__).resolve().parents[2]
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

    @property
    def label(self) -> str:
        if self.tag:
            return f"{self.method} ({self.tag})"
        if self.method == "partial_noising":
            return f"partial_noising (noise {self.params['noise_level']:g})"
        if self.method == "sample_rank":
            return f"sample_rank (N={self.params['num_samples']})"
        if self.method == "frs":
            k = "K" if self.num_steps is None else f"K={self.num_steps}"
            return f"frs ({self.solver}, {k})"
        return self.method

    @property
    def uses_reasoner(self) -> bool:
        return self.method not in REASONER_FREE_METHODS

    def to_dict(self) -> dict[str, Any]:
        params = {
            k: v if isinstance(v, (int, float, str, bool)) else type(v).__name__
            for k, v in self.params.items()
        }
        fields = {k: v for k, v in asdict(self).items() if k != "params"}
        return {**fields, "params": params, "label": self.label}


@dataclass(frozen=True)
class EvalConfig:
    """What every episode shares (written to results.json)."""

    execute_rows: int = 5
    reasoner: ReasonerConfig = ReasonerConfig()
    max_translation: float = 0.05  # metres per row for magnitude 1.0 ("more")
    env: EnvConfig = EnvConfig()
    tasks: tuple[str, ...] | None = None  # restrict to these task names (None: whole split)


def default_settings(
    methods: Sequence[str] = METHODS,
    noise_levels: Sequence[float] = (0.3, 0.5, 0.7),
    num_samples: Sequence[int] = (4, 16),
    frs_steps: Sequence[int] = (10, 5),
    frs_solvers: Sequence[str] = ("euler", "midpoint"),
    split: str = "novel",
) -> list[Setting]:
    """The comparison grid of the issue (sweeps per baseline, FRS per K x solver)."""
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
    return out


def episode_seed(seed: int, task_index: int, episode: int) -> int:
    return 10000 * (seed + 1) + 100 * task_index + episode


# ------------------------------------------------------------------------------ embeddings


def embed_texts_subprocess(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """MiniLM embeddings of ``texts`` computed in a child process.

    Measured here: loading sentence-transformers in the evaluating process leaves torch/OpenMP
    worker threads behind that slow the policy's own torch calls several-fold on 2 cores.
    """
    texts = sorted(set(texts))
    code = (
        "import json, sys, numpy as np\n"
        "from frs_steering.instructions import default_encoder\n"
        "texts = json.loads(sys.stdin.read())\n"
        "np.save(sys.argv[1], default_encoder().encode(texts))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_SOURCE_ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "emb.npy"
        subprocess.run(
            [sys.executable, "-c", code, str(path)],
            input=json.dumps(texts),
            text=True,
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        vectors = np.load(path)
    return {t: vectors[i].astype(np.float32) for i, t in enumerate(texts)}


def split_instructions(split: str) -> list[str]:
    return [text for task in get_split(split) for text in task.instructions()]


class _LookupEmbedding:
    """Picklable ``embed_fn`` backed by a precomputed table."""

    def __init__(self, table: Mapping[str, np.ndarray]) -> None:
        self.table = dict(table)

    def __call__(self, text: str) -> np.ndarray:
        try:
            return self.table[text]
        except KeyError:
            raise KeyError(f"no precomputed embedding for instruction {text!r}") from None


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


def _policy_observation(obs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {
        "state": torch.as_tensor(np.asarray(obs["state"], dtype=np.float32)).unsqueeze(0),
        "instruction": torch.as_tensor(
            np.asarray(obs["instruction_embedding"], dtype=np.float32)
        ).unsqueeze(0),
    }


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
    reasoner.reset(seed)
    generator = torch.Generator().manual_seed(seed)
    idle = torch.zeros(spec.chunk_shape)
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
    success = False
    while True:
        policy_obs = _policy_observation(obs)
        with torch.inference_mode():
            cache = policy.encode(policy_obs)
        proposal = reasoner.propose_for(obs, task) if setting.uses_reasoner else None
        ref = None
        if proposal is None or proposal.defer:
            deferred += proposal is not None
            reasoner_free = not setting.uses_reasoner
            result = steer(
                policy,
                idle,
                observation=policy_obs,
                cache=cache,
                method=setting.method if reasoner_free else "base",
                params=setting.params if reasoner_free else None,
                reference_normalized=True,
                generator=generator,
                include_base_sample=False,
            )
        else:
            ref = cartesian_reference(spec, layout, proposal, current_gripper=gripper_cmd)
            result = steer(
                policy,
                ref.chunk,
                cache=cache,
                method=setting.method,
                params=setting.params,
                mask=ref.mask,
                reference_normalized=True,
                generator=generator,
                num_steps=setting.num_steps,
                solver=setting.solver,
                include_base_sample=record,
            )
        if collect and result.noise is not None:
            samples.append(
                ChunkSample(
                    observation={k: v[0].numpy() for k, v in policy_obs.items()},
                    noise=result.noise[0].numpy(),
                    steered=(result.steered[0] & (ref is not None)).numpy(),
                    chunk=result.chunk[0].numpy(),
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
        record=records if record else None,
        objects=objects,
        samples=samples if collect else None,
    )


# ------------------------------------------------------------------------------ workers

_WORKER: dict[str, Any] = {}


def _init_worker(
    checkpoint: str | None,
    policy,
    embed_fn: EmbedFn,
    config: EvalConfig,
    threads: int,
    collect: bool = False,
) -> None:
    torch.set_num_threads(threads)
    _WORKER["collect"] = collect
    _WORKER["policy"] = policy if policy is not None else load_policy(checkpoint)
    _WORKER["embed_fn"] = embed_fn
    _WORKER["config"] = config
    _WORKER["envs"] = {}


def _run_job(job: tuple[Setting, TaskSpec, int]) -> EpisodeResult:
    setting, task, seed = job
    envs = _WORKER["envs"]
    config: EvalConfig = _WORKER["config"]
    if setting.split not in envs:
        envs[setting.split] = FrankaTabletopEnv(
            tasks=setting.split, config=config.env, embed_fn=_WORKER["embed_fn"]
        )
    reasoner = ScriptedReasoner(config.reasoner, seed=seed)
    return run_episode(
        envs[setting.split],
        _WORKER["policy"],
        reasoner,
        task,
        setting,
        seed,
        config,
        collect=_WORKER["collect"],
    )


def make_jobs(
    settings: Sequence[Setting],
    episodes_per_task: int,
    seeds: Sequence[int],
    tasks: Sequence[str] | None = None,
) -> list[tuple[Setting, TaskSpec, int]]:
    """(setting, task, env seed) for every episode; ``tasks`` filters by task name."""
    jobs = []
    for setting in settings:
        for task_index, task in enumerate(get_split(setting.split)):
            if tasks is not None and task.name not in tasks:
                continue
            for seed in seeds:
                for episode in range(episodes_per_task):
                    jobs.append((setting, task, episode_seed(seed, task_index, episode)))
    return jobs


def run_jobs(
    jobs: Sequence[tuple[Setting, TaskSpec, int]],
    *,
    checkpoint: str | None = None,
    policy=None,
    embed_fn: EmbedFn,
    config: EvalConfig,
    workers: int = 1,
    progress: bool = True,
    collect: bool = False,
) -> list[EpisodeResult]:
    """Run episodes in this process (``workers=1``) or in a spawn pool (``collect``: keep
    per-chunk samples, see :func:`run_episode`)."""
    bar = tqdm(total=len(jobs), desc="episodes", unit="ep", disable=not progress)
    results: list[EpisodeResult] = []
    wins: dict[str, list[int]] = {}

    def note(result: EpisodeResult) -> None:
        results.append(result)
        counts = wins.setdefault(result.setting, [0, 0])
        counts[0] += result.success
        counts[1] += 1
        bar.update(1)
        bar.set_postfix_str(f"{result.setting}: {counts[0]}/{counts[1]}")

    if workers <= 1:
        previous = dict(_WORKER)
        _init_worker(checkpoint, policy, embed_fn, config, torch.get_num_threads(), collect)
        try:
            for job in jobs:
                note(_run_job(job))
        finally:
            _WORKER.clear()
            _WORKER.update(previous)
    else:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(_SOURCE_ROOT), os.environ.get("PYTHONPATH")])
        )
        context = multiprocessing.get_context("spawn")
        args = (checkpoint, policy if checkpoint is None else None, embed_fn, config, 1, collect)
        with context.Pool(workers, initializer=_init_worker, initargs=args) as pool:
            for result in pool.imap_unordered(_run_job, jobs, chunksize=1):
                note(result)
    bar.close()
    order = {(s.label, t.name, seed): i for i, (s, t, seed) in enumerate(jobs)}
    results.sort(key=lambda r: order[(r.setting, r.task, r.seed)])
    return results


# ------------------------------------------------------------------------------ statistics


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval for a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(settings: Sequence[Setting], results: Sequence[EpisodeResult]) -> list[dict]:
    rows = []
    for setting in settings:
        mine = [r for r in results if r.setting == setting.label and _split_of(r, setting)]
        n = len(mine)
        wins = sum(r.success for r in mine)
        low, high = wilson_interval(wins, n)
        per_task: dict[str, list[int]] = {}
        for r in mine:
            per_task.setdefault(r.task, [0, 0])
            per_task[r.task][0] += r.success
            per_task[r.task][1] += 1
        chunks = sum(r.chunks for r in mine)
        rows.append(
            {
                **setting.to_dict(),
                "episodes": n,
                "successes": wins,
                "success_rate": wins / n if n else 0.0,
                "ci95": [low, high],
                "mean_steps": float(np.mean([r.steps for r in mine])) if mine else 0.0,
                "deferred_chunk_fraction": (
                    sum(r.deferred_chunks for r in mine) / chunks if chunks else 0.0
                ),
                "per_task": {k: {"successes": v[0], "episodes": v[1]} for k, v in per_task.items()},
            }
        )
    return rows


def _split_of(result: EpisodeResult, setting: Setting) -> bool:
    return any(t.name == result.task for t in get_split(setting.split))


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| split | method | setting | success | 95% CI | episodes | mean steps | deferred |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        low, high = row["ci95"]
        lines.append(
            f"| {row['split']} | {row['method']} | {row['label']} | "
            f"{100 * row['success_rate']:.1f}% | [{100 * low:.1f}, {100 * high:.1f}] | "
            f"{row['episodes']} | {row['mean_steps']:.1f} | "
            f"{100 * row['deferred_chunk_fraction']:.0f}% |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_success(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Bar plot of success per setting with Wilson 95% error bars."""
    plt = _pyplot()
    colors = {m: f"C{i}" for i, m in enumerate(METHODS)}
    labels = [f"{r['label']}\n[{r['split']}]" for r in rows]
    rates = np.array([100 * r["success_rate"] for r in rows])
    low = np.array([100 * r["ci95"][0] for r in rows])
    high = np.array([100 * r["ci95"][1] for r in rows])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4.2), dpi=110)
    x = np.arange(len(rows))
    ax.bar(x, rates, color=[colors.get(r["method"], "0.5") for r in rows])
    ax.errorbar(x, rates, yerr=[rates - low, high - rates], fmt="none", ecolor="k", capsize=3)
    for xi, rate, row in zip(x, rates, rows, strict=True):
        ax.text(xi, rate + 1.5, f"{rate:.0f}%\nn={row['episodes']}", ha="center", fontsize=7)
    ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 110)
    ax.set_title("Success per method (95% Wilson CI)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_episode(steered: EpisodeResult, base: EpisodeResult | None, path: Path) -> Path:
    """End-effector paths of one episode: top-down (x-y) and side (x-z) views.

    Blue: executed path under steering; per steered chunk, grey dashed: the reference direction
    (its executed rows integrated from the chunk's start), red dotted: an unsteered sample from the
    same observation; orange: the base policy's own rollout with the same seed.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), dpi=110)
    for ax, (i, j, names) in zip(axes, ((0, 1, "xy"), (0, 2, "xz")), strict=True):
        start = np.asarray(steered.record[0].ee_start)
        path_pts = [start] + [np.asarray(p) for c in steered.record for p in c.executed]
        pts = np.array(path_pts)
        first_ref = first_uns = True
        for chunk in steered.record:
            if chunk.reference is None:
                continue
            origin = np.asarray(chunk.ee_start)
            rows = max(1, len(chunk.executed))
            ref = origin + np.cumsum(np.asarray(chunk.reference)[:rows], axis=0)
            ref = np.vstack([origin, ref])
            ax.plot(
                ref[:, i],
                ref[:, j],
                "--",
                color="0.55",
                lw=1,
                label="reference direction" if first_ref else None,
            )
            first_ref = False
            if chunk.unsteered is not None:
                uns = np.vstack([origin, origin + np.cumsum(np.asarray(chunk.unsteered), axis=0)])
                ax.plot(
                    uns[:, i],
                    uns[:, j],
                    ":",
                    color="C3",
                    lw=1.2,
                    label="unsteered sample" if first_uns else None,
                )
                first_uns = False
        ax.plot(
            pts[:, i],
            pts[:, j],
            "-o",
            color="C0",
            ms=2,
            lw=1.8,
            label=f"refined ({steered.setting}), {'success' if steered.success else 'fail'}",
        )
        deferred = [np.asarray(c.ee_start) for c in steered.record if c.deferred]
        if deferred:
            d = np.array(deferred)
            ax.scatter(
                d[:, i],
                d[:, j],
                marker="s",
                facecolor="none",
                edgecolor="k",
                s=30,
                label="chunk deferred to the policy",
                zorder=5,
            )
        if base is not None and base.record:
            b0 = np.asarray(base.record[0].ee_start)
            bpts = np.array([b0] + [np.asarray(p) for c in base.record for p in c.executed])
            ax.plot(
                bpts[:, i],
                bpts[:, j],
                "-",
                color="C1",
                lw=1.4,
                alpha=0.8,
                label=f"base policy rollout, {'success' if base.success else 'fail'}",
            )
        obj = steered.objects or {}
        if "cube" in obj:
            ax.scatter(
                obj["cube"][i],
                obj["cube"][j],
                marker="s",
                s=120,
                color="C2",
                label="task cube",
                zorder=6,
            )
        if "mat" in obj:
            ax.scatter(
                obj["mat"][i],
                obj["mat"][j],
                marker="X",
                s=120,
                color="C4",
                label="task mat",
                zorder=6,
            )
        for k, cube in enumerate(obj.get("other_cubes", [])):
            ax.scatter(
                cube[i],
                cube[j],
                marker="s",
                s=60,
                color="0.7",
                label="other cubes" if k == 0 else None,
            )
        for k, mat in enumerate(obj.get("other_mats", [])):
            ax.scatter(
                mat[i],
                mat[j],
                marker="x",
                s=60,
                color="0.7",
                label="other mats" if k == 0 else None,
            )
        ax.set_xlabel(f"{names[0]} (m)")
        ax.set_ylabel(f"{names[1]} (m)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title("top-down (x-y)" if names == "xy" else "side (x-z)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, loc="best")
    fig.suptitle(f"{steered.task}, seed {steered.seed}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ driver


def evaluate(
    out: Path,
    *,
    checkpoint: str | Path | None = None,
    policy=None,
    settings: Sequence[Setting],
    episodes_per_task: int = 5,
    seeds: Sequence[int] = (0,),
    config: EvalConfig = EvalConfig(),
    sanity_episodes_per_task: int = 2,
    embeddings: Mapping[str, np.ndarray] | None = None,
    workers: int = 1,
    progress: bool = True,
    plots: bool = True,
) -> dict:
    """Run the comparison and write results.json / results.md / success.png / episode.png."""
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (checkpoint is None) == (policy is None):
        raise ValueError("give exactly one of checkpoint or policy")
    if checkpoint is not None and workers <= 1:
        policy, checkpoint = load_policy(checkpoint), None
    all_settings = list(settings)
    if sanity_episodes_per_task > 0:
        all_settings.append(Setting("base", split="pretrain"))
    splits = sorted({s.split for s in all_settings})
    if embeddings is None:
        embeddings = embed_texts_subprocess([t for s in splits for t in split_instructions(s)])
    embed_fn = _LookupEmbedding(embeddings)
    jobs = make_jobs(settings, episodes_per_task, seeds, config.tasks)
    if sanity_episodes_per_task > 0:
        jobs += make_jobs(all_settings[-1:], sanity_episodes_per_task, seeds[:1])
    if not jobs:
        raise ValueError("no episodes to run (check --tasks against the split)")
    results = run_jobs(
        jobs,
        checkpoint=None if checkpoint is None else str(checkpoint),
        policy=policy,
        embed_fn=embed_fn,
        config=config,
        workers=workers,
        progress=progress,
    )
    rows = summarize(all_settings, results)
    document = {
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "config": {
            "execute_rows": config.execute_rows,
            "max_translation": config.max_translation,
            "reasoner": asdict(config.reasoner),
            "episodes_per_task": episodes_per_task,
            "seeds": list(seeds),
            "sanity_episodes_per_task": sanity_episodes_per_task,
            "max_episode_steps": config.env.max_episode_steps,
            "tasks": None if config.tasks is None else list(config.tasks),
        },
        "rows": rows,
        "episodes": [
            {k: v for k, v in asdict(r).items() if k not in ("record", "objects")} for r in results
        ],
        "seconds": None,
    }
    table = markdown_table(rows)
    if plots:
        plot_success(rows, out / "success.png")
        _episode_picture(
            out / "episode.png", settings, results, policy, checkpoint, embed_fn, config
        )
    document["seconds"] = round(time.perf_counter() - start, 1)
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    header = (
        f"Closed-loop success, {episodes_per_task} episodes per task x seeds {list(seeds)}; "
        f"execute_rows={config.execute_rows}, defer_radius={config.reasoner.defer_radius} m, "
        f"slow_radius={config.reasoner.slow_radius} m, quantize={config.reasoner.quantize}, "
        f"angular_noise={config.reasoner.angular_noise_deg} deg, "
        f"wrong_rate={config.reasoner.wrong_direction_rate}; {document['seconds']} s.\n\n"
    )
    (out / "results.md").write_text(header + table)
    return document


def _episode_picture(path, settings, results, policy, checkpoint, embed_fn, config) -> None:
    """Re-run (deterministically) one episode with recording: FRS vs the base policy."""
    frs = [s for s in settings if s.method == "frs"]
    if not frs:
        return
    steered_setting = frs[0]
    base_setting = Setting("base", split=steered_setting.split)
    wins = {(r.task, r.seed) for r in results if r.setting == steered_setting.label and r.success}
    base_wins = {(r.task, r.seed) for r in results if r.setting == "base" and r.success}
    candidates = [
        (r.task, r.seed) for r in results if r.setting == steered_setting.label
    ]  # in job order
    preferred = [c for c in candidates if c in wins and c not in base_wins] or candidates
    task_name, seed = preferred[0]
    task = next(t for t in get_split(steered_setting.split) if t.name == task_name)
    if policy is None:
        policy = load_policy(checkpoint)
    env = FrankaTabletopEnv(tasks=steered_setting.split, config=config.env, embed_fn=embed_fn)
    try:
        runs = [
            run_episode(
                env,
                policy,
                ScriptedReasoner(config.reasoner, seed=seed),
                task,
                s,
                seed,
                config,
                record=True,
            )
            for s in (steered_setting, base_setting)
        ]
    finally:
        env.close()
    plot_episode(runs[0], runs[1], path)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--split", default="novel")
    parser.add_argument("--episodes-per-task", type=int, default=5)
    parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--noise-levels", default="0.3,0.5,0.7", help="partial-noising sweep")
    parser.add_argument("--num-samples", default="4,16", help="sample-and-rank sweep")
    parser.add_argument("--frs-steps", default="10,5", help="FRS step counts K")
    parser.add_argument("--frs-solvers", default="euler,midpoint")
    parser.add_argument("--execute-rows", type=int, default=EvalConfig.execute_rows)
    defaults = ReasonerConfig()
    parser.add_argument("--defer-radius", type=float, default=defaults.defer_radius)
    parser.add_argument(
        "--slow-radius",
        type=float,
        default=defaults.slow_radius,
        help="'less' (0.5) within this distance of the sub-goal, else 'more'",
    )
    parser.add_argument("--no-quantize", action="store_true", help="exact unit directions")
    parser.add_argument("--angular-noise", type=float, default=defaults.angular_noise_deg)
    parser.add_argument("--wrong-rate", type=float, default=defaults.wrong_direction_rate)
    parser.add_argument(
        "--sanity-episodes-per-task",
        type=int,
        default=2,
        help="base-policy episodes per pretraining task (0: skip)",
    )
    parser.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=EnvConfig.max_episode_steps,
        help="control steps before an episode times out",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    settings = default_settings(
        methods,
        noise_levels=_floats(args.noise_levels),
        num_samples=[int(v) for v in _floats(args.num_samples)],
        frs_steps=[int(v) for v in _floats(args.frs_steps)],
        frs_solvers=[s.strip() for s in args.frs_solvers.split(",") if s.strip()],
        split=args.split,
    )
    reasoner = ReasonerConfig(
        defer_radius=args.defer_radius,
        slow_radius=args.slow_radius,
        quantize=not args.no_quantize,
        angular_noise_deg=args.angular_noise,
        wrong_direction_rate=args.wrong_rate,
    )
    if args.workers <= 1:
        torch.set_num_threads(2)
    document = evaluate(
        args.out,
        checkpoint=args.checkpoint,
        settings=settings,
        episodes_per_task=args.episodes_per_task,
        seeds=[int(v) for v in _floats(args.seeds)],
        config=EvalConfig(
            execute_rows=args.execute_rows,
            reasoner=reasoner,
            env=EnvConfig(max_episode_steps=args.max_steps),
            tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()) or None,
        ),
        sanity_episodes_per_task=args.sanity_episodes_per_task,
        workers=args.workers,
        progress=not args.quiet,
    )
    print((args.out / "results.md").read_text())
    print(
        f"wrote {args.out}/results.json, results.md, success.png, episode.png "
        f"in {document['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
