"""Expert demonstration generation: (state, instruction embedding, action chunk) tuples -> .npz.

Recording choice: at *every* control step the expert plans a full ``(horizon, 8)`` chunk (default
10 rows = 1 s at 10 Hz) from the current observation; the whole chunk is stored as the training
target for that step, then only its first ``execute_rows`` rows (default 1) are executed before
re-planning. Every stored chunk is therefore the expert's intended next second from exactly that
state, and consecutive samples overlap the way a receding-horizon policy is queried.

Tasks are visited round-robin over the split (episode ``e`` runs ``tasks[e % n]`` with seed
``seed + e``, :func:`demo_seeds`); only successful episodes are kept unless ``keep_failures`` is
set. Recovery data (DART): a share of the episodes execute perturbed expert chunks
(:class:`DartNoise`) while recording the expert's clean chunk at every visited state.

Arrays in the file (N samples, E episodes, U distinct instructions, T tasks), no pickles:
``state`` (N, 49) float32 (see ``env.STATE_LAYOUT``), ``embedding`` (N, 384) float32,
``actions`` (N, horizon, 8) float32, ``instruction_index`` (N,) int32 into ``instructions`` (U,)
str and ``instruction_embeddings`` (U, 384), ``task_index`` (N,) int32 into ``task_names`` (T,),
``episode_index`` / ``step_index`` (N,) int32, ``episode_seed`` / ``episode_length`` (E,) int32,
``episode_task`` (E,) str, ``episode_success`` (E,) bool, ``meta`` (0-d str, JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from frs_sim.scene import TARGET_NAMES
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


@dataclass(frozen=True)
class DartNoise:
    """Perturbations of the *executed* actions of a DART-style recovery rollout.

    The recorded label at every visited state stays the expert's clean chunk, so the data show
    how the expert recovers from the drift a learner produces (misaligned grasps, missed grasps,
    dropped cubes), states clean demonstrations never visit.
    """

    translation_std: float = 0.01  # metres, Gaussian per executed row and axis
    chunk_offset_std: float = 0.005  # metres, one Gaussian offset per executed chunk and axis
    gripper_flip: float = 0.03  # probability per chunk that the executed gripper is inverted

    def __post_init__(self) -> None:
        values = (self.translation_std, self.chunk_offset_std, self.gripper_flip)
        if not all(np.isfinite(v) and v >= 0 for v in values) or self.gripper_flip > 1:
            raise ValueError(f"invalid DART noise {self}")

    def apply(self, chunk: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A perturbed copy of an expert ``(horizon, 8)`` chunk (clipped to the action box)."""
        noisy = np.array(chunk, dtype=np.float64, copy=True)
        offset = rng.normal(0.0, self.chunk_offset_std, 3)
        noisy[:, 0:3] += offset + rng.normal(0.0, self.translation_std, (len(noisy), 3))
        if rng.random() < self.gripper_flip:
            noisy[:, 6] = 1.0 - noisy[:, 6]
        return noisy


@dataclass(frozen=True)
class Redirect:
    """A change of mind: from control ``step`` on, the expert takes the cube to ``task``'s mat.

    Only for mat-unnamed tasks, where any mat satisfies the instruction: the data then show
    heading for every mat from states on the way to another, without naming a pair.
    """

    step: int
    task: TaskSpec
    #: Change only while the cube is in transit (:func:`in_transit`), at the first such step
    #: from ``step`` on; a cube that reaches the first mat's neighbourhood first is not redirected.
    in_transit: bool = False
    #: The change becomes the episode's task: it ends once the new mat's task succeeds. Without
    #: it the environment still checks the first mat, and the episode idles over the new mat
    #: until the step limit (the window redirects' original data).
    ends_at_new_mat: bool = False


#: Control steps between which a redirected episode changes its mat (uniform).
REDIRECT_STEPS = (10, 45)
#: The same for in-transit redirects: drawn early, they take effect when the transit starts.
REDIRECT_TRANSIT_STEPS = (0, 15)
#: In transit: the cube has moved this far from where it started (m) ...
TRANSIT_MIN_MOVE = 0.02
#: ... and is still this far from the first mat's centre, horizontally (m).
TRANSIT_MIN_DISTANCE = 0.10
#: The verbs whose mat-unnamed episodes can be redirected (and are, by default).
REDIRECT_VERBS = ("place", "push")


def draw_redirect(
    task: TaskSpec,
    rng: np.random.Generator,
    in_transit: bool = False,
    ends_at_new_mat: bool = False,
) -> Redirect:
    """A redirect of a mat-unnamed ``task`` to one of the other mats, at a uniform step (an
    in-transit redirect always ends at the new mat)."""
    if task.names_target or task.target is None:
        raise ValueError(f"only mat-unnamed place / push tasks can be redirected, not {task.name}")
    others = [m for m in TARGET_NAMES if m != task.target]
    target = others[int(rng.integers(len(others)))]
    low, high = REDIRECT_TRANSIT_STEPS if in_transit else REDIRECT_STEPS
    step = int(rng.integers(low, high + 1))
    new_task = dataclasses.replace(task, target=target)
    return Redirect(step, new_task, in_transit, ends_at_new_mat or in_transit)


def in_transit(obs: dict, task: TaskSpec, start: np.ndarray) -> bool | None:
    """Whether ``task``'s cube is on its way: moved from ``start`` and still far from the mat
    (True), not moved yet (False), or already near the mat (None: too late to change)."""
    cube = np.asarray(obs["object_pos"][task.object_index], dtype=float)
    if np.linalg.norm(cube - start) < TRANSIT_MIN_MOVE:
        return False
    mat = np.asarray(obs["target_pos"][task.target_index], dtype=float)
    return True if np.linalg.norm(cube[:2] - mat[:2]) > TRANSIT_MIN_DISTANCE else None


@dataclass
class ExpertRollout:
    """One expert episode: per decision the observation, the expert's label and what ran."""

    observations: list[dict]
    labels: list[np.ndarray]  # (horizon, 8) clean expert chunks
    executed: list[np.ndarray]  # (rows, 8) the rows actually sent (noisy under DART)
    steps: list[int]  # control step at which each decision was taken
    success: bool
    instruction: str
    instruction_embedding: np.ndarray
    redirected_at: int | None = None  # control step of the change of mind, if it happened


def expert_rollout(
    env: FrankaTabletopEnv,
    expert: ScriptedExpert,
    task: TaskSpec,
    seed: int,
    rng: np.random.Generator,
    execute_rows: tuple[int, int] = (1, 1),
    noise: DartNoise | None = None,
    template_id: int | None = None,
    redirect: Redirect | None = None,
) -> ExpertRollout:
    """Roll the expert out once; each chunk executes ``rng.integers(lo, hi + 1)`` rows.

    With ``noise`` the executed rows are perturbed (DART) while the labels stay clean. With
    ``redirect`` the expert heads for ``redirect.task`` from control step ``redirect.step`` on
    (in transit: from the first step after it at which the cube is in transit, or never).
    Deterministic given ``seed`` and the state of ``rng``.
    """
    low, high = execute_rows
    options = {"task": task} if template_id is None else {"task": task, "template_id": template_id}
    obs, _ = env.reset(seed=seed, options=options)
    out = ExpertRollout([], [], [], [], False, env.instruction, env.instruction_embedding.copy())
    start = np.asarray(obs["object_pos"][task.object_index], dtype=float).copy()
    step = 0
    while True:
        if redirect is not None and out.redirected_at is None and step >= redirect.step:
            moving = in_transit(obs, task, start) if redirect.in_transit else True
            if moving is None:
                redirect = None  # reached the first mat's neighbourhood: no change of mind
            elif moving:
                out.redirected_at = step
                if redirect.ends_at_new_mat:
                    env.task = redirect.task  # success (and the episode's end) at the new mat
        heading = redirect.task if out.redirected_at is not None else task
        label = expert(obs, heading)
        rows = int(rng.integers(low, high + 1))
        sent = label if noise is None else noise.apply(label, rng)
        sent = np.stack([env.validate_action(r) for r in sent[:rows]])
        out.observations.append(obs)
        out.labels.append(label)
        out.executed.append(sent)
        out.steps.append(step)
        result = env.execute_chunk(sent, n_rows=rows)
        step += len(result.rewards)
        obs = result.last_observation
        if result.done:
            out.success = bool(result.infos[-1]["success"])
            return out


def demo_seeds(seed: int, episodes: int) -> range:
    """Environment seeds of ``generate_demos(seed=seed, episodes=episodes)`` (one per episode)."""
    return range(seed, seed + episodes)


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
    max_execute_rows: int | None = None,
    noise: DartNoise | None = None,
    noisy_fraction: float = 0.0,
    phrasing_fraction: float = 0.0,
    redirect_fraction: float = 0.0,
    redirect_verbs: Sequence[str] = REDIRECT_VERBS,
    redirect_in_transit: bool = False,
    redirect_ends_at_new_mat: bool = False,
) -> DemoSet:
    """Roll the scripted expert out and collect per-step (state, embedding, chunk) samples.

    Recipe knobs (all off by default, which reproduces the original demonstrations exactly):
    ``max_execute_rows`` draws the rows run per chunk from ``execute_rows..max_execute_rows``;
    a ``noisy_fraction`` of the episodes are DART rollouts under ``noise`` (kept whether or not
    they succeed: their labels are the expert's at every visited state); a
    ``phrasing_fraction`` of the episodes are phrased with the generated training vocabulary
    (``TaskSpec.with_vocabulary("train")``) instead of the task's own templates; a
    ``redirect_fraction`` of the mat-unnamed episodes of ``redirect_verbs`` change their mat
    mid-way (:func:`draw_redirect`; kept whether or not they succeed, like DART episodes);
    with ``redirect_in_transit`` only while the cube is on its way, never near the first mat;
    ``redirect_ends_at_new_mat`` (implied in transit) ends a redirected episode at the new mat.
    """
    high_rows = execute_rows if max_execute_rows is None else max_execute_rows
    if not 1 <= execute_rows <= high_rows <= horizon:
        raise ValueError(
            f"execute_rows must satisfy 1 <= {execute_rows} <= {high_rows} <= {horizon}"
        )
    if not all(0.0 <= f <= 1.0 for f in (noisy_fraction, phrasing_fraction, redirect_fraction)):
        raise ValueError(
            "noisy_fraction, phrasing_fraction and redirect_fraction must be in [0, 1]"
        )
    if set(redirect_verbs) - set(REDIRECT_VERBS):
        raise ValueError(f"redirect_verbs must be place and / or push, got {redirect_verbs}")
    if noisy_fraction > 0 and noise is None:
        raise ValueError("noisy_fraction > 0 needs a DartNoise")
    task_list = get_split(tasks) if isinstance(tasks, str) else tuple(tasks)
    env = FrankaTabletopEnv(tasks=task_list, config=config, embed_fn=embed_fn)
    expert = ScriptedExpert(horizon=horizon, config=env.config)
    task_names = [t.name for t in task_list]
    instructions: dict[str, int] = {}
    inst_embs: list[np.ndarray] = []
    states, chunks, inst_idx, task_idx, ep_idx, step_idx = [], [], [], [], [], []
    ep_seed, ep_len, ep_task, ep_success = [], [], [], []
    n_success = n_noisy = n_phrased = n_redirected = n_changed = 0
    bar = tqdm(range(episodes), desc="demos", disable=not progress, unit="ep")
    for episode, env_seed in zip(bar, demo_seeds(seed, episodes), strict=True):
        task = task_list[episode % len(task_list)]
        # Recipe randomness from its own stream: the environment's layout depends on env_seed only.
        rng = np.random.default_rng([seed, episode, 1])
        noisy = noisy_fraction > 0 and rng.random() < noisy_fraction
        phrased = phrasing_fraction > 0 and rng.random() < phrasing_fraction
        template_id = None
        if phrased:
            task = task.with_vocabulary("train")
            template_id = int(rng.integers(task.phrasing_count()))
        redirect = None
        redirectable = not task.names_target and task.verb in redirect_verbs
        if redirect_fraction > 0 and redirectable and rng.random() < redirect_fraction:
            redirect = draw_redirect(task, rng, redirect_in_transit, redirect_ends_at_new_mat)
        rollout = expert_rollout(
            env,
            expert,
            task,
            env_seed,
            rng,
            (execute_rows, high_rows),
            noise if noisy else None,
            template_id,
            redirect,
        )
        success = rollout.success
        n_success += success
        bar.set_postfix(success=f"{n_success / (episode + 1):.2f}")
        ep_seed.append(env_seed)
        ep_len.append(len(rollout.labels))
        ep_task.append(task.name)
        ep_success.append(success)
        if not success and not keep_failures and not noisy and redirect is None:
            continue
        n_noisy += noisy
        n_redirected += redirect is not None
        n_changed += rollout.redirected_at is not None
        n_phrased += phrased
        if rollout.instruction not in instructions:
            instructions[rollout.instruction] = len(instructions)
            inst_embs.append(rollout.instruction_embedding)
        n = len(rollout.labels)
        states += [o["state"] for o in rollout.observations]
        chunks += rollout.labels
        inst_idx += [instructions[rollout.instruction]] * n
        task_idx += [task_names.index(task.name)] * n
        ep_idx += [episode] * n
        step_idx += rollout.steps
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
        "seeds": [seed, seed + episodes - 1],
        "execute_rows": execute_rows,
        "max_execute_rows": high_rows,
        "dart_noise": None if noise is None else noise.__dict__,
        "noisy_fraction": noisy_fraction,
        "phrasing_fraction": phrasing_fraction,
        "noisy_episodes_kept": n_noisy,
        "phrased_episodes_kept": n_phrased,
        "redirect_fraction": redirect_fraction,
        "redirect_verbs": list(redirect_verbs),
        "redirected_episodes_kept": n_redirected,  # drawn a redirect, kept
        "redirected_episodes_changed": n_changed,  # of which the mat did change
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
    parser.add_argument(
        "--max-execute-rows", type=int, default=None, help="draw rows per chunk up to this"
    )
    parser.add_argument("--noisy-fraction", type=float, default=0.0, help="DART episode share")
    parser.add_argument("--noise-std", type=float, default=DartNoise.translation_std)
    parser.add_argument("--noise-offset-std", type=float, default=DartNoise.chunk_offset_std)
    parser.add_argument("--gripper-flip", type=float, default=DartNoise.gripper_flip)
    parser.add_argument(
        "--phrasing-fraction", type=float, default=0.0, help="share phrased with the train vocab"
    )
    parser.add_argument(
        "--redirect-fraction",
        type=float,
        default=0.0,
        help="share of mat-unnamed episodes that change their mat mid-way",
    )
    parser.add_argument(
        "--redirect-verbs",
        default=",".join(REDIRECT_VERBS),
        help="verbs whose episodes may be redirected",
    )
    parser.add_argument(
        "--redirect-in-transit",
        action="store_true",
        help="redirect only while the cube is on its way, never near the first mat",
    )
    parser.add_argument(
        "--redirect-ends-at-new-mat",
        action="store_true",
        help="a redirected episode ends once the cube is on the new mat (no idling there)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    noise = DartNoise(args.noise_std, args.noise_offset_std, args.gripper_flip)
    demos = generate_demos(
        tasks=args.split,
        episodes=args.episodes,
        seed=args.seed,
        execute_rows=args.execute_rows,
        horizon=args.horizon,
        keep_failures=args.keep_failures,
        progress=not args.quiet,
        max_execute_rows=args.max_execute_rows,
        noise=noise if args.noisy_fraction > 0 else None,
        noisy_fraction=args.noisy_fraction,
        phrasing_fraction=args.phrasing_fraction,
        redirect_fraction=args.redirect_fraction,
        redirect_verbs=tuple(v.strip() for v in args.redirect_verbs.split(",") if v.strip()),
        redirect_in_transit=args.redirect_in_transit,
        redirect_ends_at_new_mat=args.redirect_ends_at_new_mat,
    )
    path = demos.save(args.out)
    print(
        f"wrote {len(demos)} samples from {int(demos.episode_success.sum())}/{args.episodes} "
        f"successful episodes to {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
