"""Running episodes: in this process or a spawn pool, and instruction embeddings from a child.

Both keep heavy state out of the evaluating process: each pool worker loads the policy once and
keeps one environment per split; MiniLM runs in a child process (see
:func:`embed_texts_subprocess`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from frs_sim.env import FrankaTabletopEnv
from frs_sim.evaluate.rollout import EmbedFn, EpisodeResult, EvalConfig, Setting, run_episode
from frs_sim.reasoner import ScriptedReasoner
from frs_sim.tasks import TaskSpec, get_split
from frs_steering.checkpoint import load_policy

#: The folder holding this checkout's ``frs_sim`` package: child processes import from it first.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def with_source_path(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` with :data:`SOURCE_ROOT` first on ``PYTHONPATH`` (for child processes)."""
    out = dict(env)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), out.get("PYTHONPATH")]))
    return out


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
    env = with_source_path({**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
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


class LookupEmbedding:
    """Picklable ``embed_fn`` backed by a precomputed table."""

    def __init__(self, table: Mapping[str, np.ndarray]) -> None:
        self.table = dict(table)

    def __call__(self, text: str) -> np.ndarray:
        try:
            return self.table[text]
        except KeyError:
            raise KeyError(f"no precomputed embedding for instruction {text!r}") from None


_WORKER: dict[str, Any] = {}


def _init_worker(
    checkpoint: str | None,
    policy,
    embed_fn: EmbedFn,
    config: EvalConfig,
    threads: int,
    collect: bool = False,
) -> None:
    """Load what every episode of this worker shares. A failure (a corrupt checkpoint, say) is
    kept and raised by the worker's first job: raised here, it would kill the worker and the
    pool would start another forever, so the evaluation would hang instead of failing."""
    try:
        torch.set_num_threads(threads)
        _WORKER["collect"] = collect
        _WORKER["policy"] = policy if policy is not None else load_policy(checkpoint)
        _WORKER["embed_fn"] = embed_fn
        _WORKER["config"] = config
        _WORKER["envs"] = {}
    except Exception as error:  # noqa: BLE001 - any set-up failure must reach the caller
        _WORKER["setup_error"] = error


def _run_job(job: tuple[Setting, TaskSpec, int]) -> EpisodeResult:
    if "setup_error" in _WORKER:
        error = _WORKER["setup_error"]
        message = f"evaluation worker set-up failed: {type(error).__name__}: {error}"
        raise RuntimeError(message) from error
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
        os.environ["PYTHONPATH"] = with_source_path(os.environ)["PYTHONPATH"]
        context = multiprocessing.get_context("spawn")
        args = (checkpoint, policy if checkpoint is None else None, embed_fn, config, 1, collect)
        with context.Pool(workers, initializer=_init_worker, initargs=args) as pool:
            for result in pool.imap_unordered(_run_job, jobs, chunksize=1):
                note(result)
    bar.close()
    order = {(s.label, t.name, seed): i for i, (s, t, seed) in enumerate(jobs)}
    results.sort(key=lambda r: order[(r.setting, r.task, r.seed)])
    return results
