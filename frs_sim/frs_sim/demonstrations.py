"""Expert demonstration generation: (state, instruction embedding, action chunk) tuples -> .npz.

Recording choice: at *every* control step the expert plans a full ``(horizon, 8)`` chunk (default
10 rows = 1 s at 10 Hz) from the current observation; the whole chunk is stored as the training
target for that step, then only its first ``execute_rows`` rows (default 1) are executed before
re-planning. Every stored chunk is therefore the expert's intended next second from exactly that
state, and consecutive samples overlap the way a receding-horizon policy is queried.

Tasks are visited round-robin over the split (episode ``e`` runs ``tasks[e % n]`` with seed
``seed + e``); only successful episodes are kept unless ``keep_failures`` is set.

Arrays in the file (N samples, E episodes, U distinct instructions, T tasks), no pickles:
``state`` (N, 46) float32 (see ``env.STATE_LAYOUT``), ``embedding`` (N, 384) float32,
``actions`` (N, horizon, 8) float32, ``instruction_index`` (N,) int32 into ``instructions`` (U,)
str and ``instruction_embeddings`` (U, 384), ``task_index`` (N,) int32 into ``task_names`` (T,),
``episode_index`` / ``step_index`` (N,) int32, ``episode_seed`` / ``episode_length`` (E,) int32,
``episode_task`` (E,) str, ``episode_success`` (E,) bool, ``meta`` (0-d str, JSON).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from frs_sim.env import (
    ACTION_DIM,
    CHUNK_HORIZON,
    STATE_DIM,
    STATE_LAYOUT,
    EnvConfig,
    FrankaTabletopEnv,
)
from frs_sim.experts import ScriptedExpert
from frs_sim.tasks import TaskSpec, get_split
from frs_steering.instructions import EMBEDDING_DIM


@dataclass
class DemoSet:
    """Demonstrations held in memory (same fields as the .npz file)."""

    state: np.ndarray
    embedding: np.ndarray
    actions: np.ndarray
    instruction_index: np.ndarray
    instructions: np.ndarray
    instruction_embeddings: np.ndarray
    task_index: np.ndarray
    task_names: np.ndarray
    episode_index: np.ndarray
    step_index: np.ndarray
    episode_seed: np.ndarray
    episode_length: np.ndarray
    episode_task: np.ndarray
    episode_success: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.state.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write a compressed .npz (plain arrays only; loadable with ``allow_pickle=False``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: v for k, v in self.__dict__.items() if k != "meta"}
        np.savez_compressed(path, meta=np.array(json.dumps(self.meta)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DemoSet:
        """Read a file written by ``save``."""
        with np.load(path, allow_pickle=False) as data:
            fields = {k: data[k] for k in data.files if k != "meta"}
            meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
        return cls(meta=meta, **fields)


def generate_demos(
    tasks: str | Sequence[TaskSpec] = "pretrain",
    episodes: int = 100,
    seed: int = 0,
    execute_rows: int = 1,
    horizon: int = CHUNK_HORIZON,
    keep_failures: bool = False,
    progress: bool = True,
    config: EnvConfig | None = None,
    embed_fn: Callable[[str], np.ndarray] | None = None,
) -> DemoSet:
    """Roll the scripted expert out and collect per-step (state, embedding, chunk) samples."""
    if not 1 <= execute_rows <= horizon:
        raise ValueError(f"execute_rows must be in 1..{horizon}")
    task_list = get_split(tasks) if isinstance(tasks, str) else tuple(tasks)
    env = FrankaTabletopEnv(tasks=task_list, config=config, embed_fn=embed_fn)
    expert = ScriptedExpert(horizon=horizon, config=env.config)
    task_names = [t.name for t in task_list]
    instructions: dict[str, int] = {}
    inst_embs: list[np.ndarray] = []
    states, chunks, inst_idx, task_idx, ep_idx, step_idx = [], [], [], [], [], []
    ep_seed, ep_len, ep_task, ep_success = [], [], [], []
    n_success = 0
    bar = tqdm(range(episodes), desc="demos", disable=not progress, unit="ep")
    for episode in bar:
        task = task_list[episode % len(task_list)]
        obs, _ = env.reset(seed=seed + episode, options={"task": task})
        ep_states, ep_chunks = [], []
        success = False
        while True:
            chunk = expert(obs, task)
            ep_states.append(obs["state"])
            ep_chunks.append(chunk)
            result = env.execute_chunk(chunk, n_rows=execute_rows)
            obs = result.last_observation
            if result.done:
                success = bool(result.infos[-1]["success"])
                break
        n_success += success
        bar.set_postfix(success=f"{n_success / (episode + 1):.2f}")
        ep_seed.append(seed + episode)
        ep_len.append(len(ep_states))
        ep_task.append(task.name)
        ep_success.append(success)
        if not success and not keep_failures:
            continue
        if env.instruction not in instructions:
            instructions[env.instruction] = len(instructions)
            inst_embs.append(env.instruction_embedding.copy())
        n = len(ep_states)
        states += ep_states
        chunks += ep_chunks
        inst_idx += [instructions[env.instruction]] * n
        task_idx += [task_names.index(task.name)] * n
        ep_idx += [episode] * n
        step_idx += list(range(0, n * execute_rows, execute_rows))
    bar.close()
    env.close()
    inst_table = (
        np.stack(inst_embs).astype(np.float32)
        if inst_embs
        else np.zeros((0, EMBEDDING_DIM), np.float32)
    )
    inst_index = np.asarray(inst_idx, dtype=np.int32)
    meta = {
        "tasks": task_names,
        "episodes": episodes,
        "seed": seed,
        "execute_rows": execute_rows,
        "horizon": horizon,
        "control_dt": env.config.control_dt,
        "action_layout": ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper", "pad"],
        "action_units": "metres / radians per 0.1 s step, base frame; gripper 0 open .. 1 closed",
        "state_layout": {k: [s.start, s.stop] for k, s in STATE_LAYOUT.items()},
        "success_rate": n_success / max(episodes, 1),
    }
    return DemoSet(
        state=np.asarray(states, dtype=np.float32).reshape(-1, STATE_DIM),
        embedding=inst_table[inst_index] if len(inst_index) else inst_table[:0],
        actions=np.asarray(chunks, dtype=np.float32).reshape(-1, horizon, ACTION_DIM),
        instruction_index=inst_index,
        instructions=np.array(list(instructions), dtype=str),
        instruction_embeddings=inst_table,
        task_index=np.asarray(task_idx, dtype=np.int32),
        task_names=np.array(task_names, dtype=str),
        episode_index=np.asarray(ep_idx, dtype=np.int32),
        step_index=np.asarray(step_idx, dtype=np.int32),
        episode_seed=np.asarray(ep_seed, dtype=np.int32),
        episode_length=np.asarray(ep_len, dtype=np.int32),
        episode_task=np.array(ep_task, dtype=str),
        episode_success=np.asarray(ep_success, dtype=bool),
        meta=meta,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m frs_sim.demonstrations --split pretrain --episodes N --out f.npz``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="pretrain", help="pretrain | novel | paraphrase | all")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument(
        "--execute-rows", type=int, default=1, help="rows executed per recorded chunk"
    )
    parser.add_argument("--horizon", type=int, default=CHUNK_HORIZON)
    parser.add_argument("--keep-failures", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    demos = generate_demos(
        tasks=args.split,
        episodes=args.episodes,
        seed=args.seed,
        execute_rows=args.execute_rows,
        horizon=args.horizon,
        keep_failures=args.keep_failures,
        progress=not args.quiet,
    )
    path = demos.save(args.out)
    print(
        f"wrote {len(demos)} samples from {int(demos.episode_success.sum())}/{args.episodes} "
        f"successful episodes to {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
