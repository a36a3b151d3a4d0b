"""Train the benchmark's generalist: the built-in flow policy on the pretraining split.

``python -m frs_sim.studies.generalist --out frs_steering/checkpoints/generalist`` runs the whole
recipe (``--profile``, default ``shipped``): scripted-expert demonstrations (cached as .npz under
``build/generalist_cache/``), the action normalizer, flow-matching training of
:class:`~frs_steering.model.FlowMatchingPolicy` (chunk 10 x 8, real dims 7, observation = state 46,
or 49 with ``--motion-state``, + MiniLM instruction embedding 384) and a safetensors + JSON
checkpoint with a loss-curve PNG and a ``training.json`` summary next to it. Deterministic for a
given seed on one machine.

Normalizer choice: a quantile fit per dim is degenerate on this data (droll/dpitch are always 0
and dyaw is nonzero on ~3% of rows, so its 1-99% spread is ~4 mrad and the rare 0.2 rad yaw steps
become ~100 sigma outliers that wreck training). The fitted quantiles are therefore widened to at
least the environment's documented action limits (+/-5 cm, +/-0.25 rad, gripper 0..1), which
also puts a "more" step of 5 cm along one axis at exactly 1.0 in the policy's space.

Encoder choice (measured on the cached demos, 800 steps, open-loop first-row translation cosine
to the expert on training states): the legacy encoder on raw inputs reached 0.24 after 400 steps;
standardizing the inputs (state in metres has centimetre-scale differences; MiniLM embeddings of
"red cube" vs "blue cube" instructions have cosine up to 0.96, ~0 on average once standardized)
lifted it to 0.60 (400 steps) / 0.78 (800); a 2-hidden-layer MLP over [state, instruction] (the
instruction has to *select* a cube and a mat from the state) reached 0.83 at 800 steps. Hence
``encoder_depth=2``, ``encoder_width=256``, ``input_normalization=True``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from frs_sim.demonstrations import REDIRECT_VERBS, DartNoise, DemoSet, demo_seeds
from frs_sim.env import (
    ACTION_DIM,
    ACTION_REAL_DIM,
    CHUNK_HORIZON,
    POSITION_STATE_DIM,
    STATE_DIM,
    EnvConfig,
    policy_state,
)
from frs_sim.evaluate.rollout import EVAL_SEED_MIN
from frs_sim.evaluate.workers import with_source_path
from frs_sim.tasks import HELD_OUT_SPLITS, find_task
from frs_steering.checkpoint import save_policy
from frs_steering.instructions import EMBEDDING_DIM
from frs_steering.model import FlowMatchingPolicy, FlowPolicyConfig, fit_discriminant_projection
from frs_steering.normalization import QuantileNormalizer, fit_normalizer
from frs_steering.policy import ActionSpec, TimeConvention
from frs_steering.train import TIME_SAMPLINGS, check_training_options, train_flow_policy

# Relative to the working directory (the repository root in every documented command): the
# package may run from the venv's site-packages, where a path beside the sources is the venv.
DEFAULT_CACHE = Path("build") / "generalist_cache"
DEFAULT_OUT = Path("frs_steering") / "checkpoints" / "generalist"


@dataclass(frozen=True)
class GeneralistRecipe:
    """Everything that determines a generalist (recorded in ``training.json``); the defaults are
    the first generalist's recipe, the profiles below the others."""

    split: str = "pretrain"
    episodes: int = 1200
    demo_seed: int = 0
    execute_rows: int = 1
    width: int = 128
    depth: int = 4
    encoder_depth: int = 2  # MLP over [state, instruction] (0: legacy additive encoder)
    encoder_width: int = 256
    input_normalization: bool = True  # standardize state and MiniLM embedding (stats saved)
    steps: int = 4000
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    num_steps: int = 10
    # Recipe knobs of issue 15 (defaults reproduce the first generalist's data exactly):
    max_execute_rows: int | None = None  # rows per demo chunk drawn from execute_rows..this
    noisy_fraction: float = 0.0  # share of DART recovery episodes (frs_sim.demonstrations)
    noise_std: float = DartNoise.translation_std
    noise_offset_std: float = DartNoise.chunk_offset_std
    gripper_flip: float = DartNoise.gripper_flip
    phrasing_fraction: float = 0.0  # share of episodes phrased with the training vocabulary
    redirect_fraction: float = 0.0  # share of mat-unnamed episodes that change their mat mid-way
    redirect_verbs: str = ",".join(REDIRECT_VERBS)  # comma-separated verbs that may be redirected
    redirect_in_transit: bool = False  # redirect only while the cube is on its way
    redirect_ends_at_new_mat: bool = False  # a redirected episode ends on the new mat
    # Feed the encoder the instruction's discriminant directions between the tasks the
    # instructions name (``instruction_classes``) instead of all 384 standardized MiniLM dims:
    # paraphrases of one task differ more in MiniLM than tasks do, and the held-out phrasings
    # differ along the paraphrase directions.
    instruction_lda: bool = False
    # The projection's shrinkage of the within-task scatter toward its mean eigenvalue
    # (``fit_discriminant_projection``): low values whiten hard, amplifying the directions the
    # training phrasings never vary along, which is where unseen phrasings move the embedding.
    instruction_lda_shrinkage: float = 0.1
    # Condition on the arm's motion too (the EE velocity, ``STATE_LAYOUT["ee_velocity"]``): a
    # carry toward one mat and one that has turned toward another differ only in motion.
    motion_state: bool = False
    # Train with this share of each batch's instructions withheld (the zero vector), so the
    # policy also has an instruction-free mode (``frs_steering.train.train_flow_policy``).
    instruction_dropout: float = 0.0
    # Train with Gaussian noise on every instruction embedding, this many times the training
    # texts' own spread around their task (``within_task_spread``), in every direction: the
    # policy then meets instructions off the training texts, as unseen phrasings are.
    instruction_noise: float = 0.0
    # The share of each batch's samples that get the instruction noise; the others keep their
    # exact training text, so the policy still reads known phrasings sharply.
    instruction_noise_share: float = 1.0
    # How flow times are drawn in training (``frs_steering.train.TIME_SAMPLINGS``): ``beta``
    # is pi0's, weighted toward the noisy end where FRS's inversion and the mode choice live.
    time_sampling: str = "uniform"

    def __post_init__(self) -> None:
        """Refuse impossible training options here, before minutes of data generation."""
        check_training_options(
            self.steps,
            self.batch_size,
            self.learning_rate,
            self.instruction_dropout,
            self.time_sampling,
            self.instruction_noise,
            self.instruction_noise_share,
        )
        for name in ("episodes", "width", "depth", "num_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "noisy_fraction",
            "phrasing_fraction",
            "redirect_fraction",
            "instruction_lda_shrinkage",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:  # also refuses NaN
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def state_dim(self) -> int:
        """How much of the tabletop state the policy reads (``frs_sim.env.policy_state``)."""
        return STATE_DIM if self.motion_state else POSITION_STATE_DIM

    def demo_key(self) -> str:
        text = f"{self.split}-{self.episodes}-{self.demo_seed}-{self.execute_rows}-{CHUNK_HORIZON}"
        extra = self.demo_options()
        if extra:  # only recipes that use the new knobs get a longer key: old caches stay valid
            text += "-" + json.dumps(extra, sort_keys=True)
        if self.motion_state:  # caches written before the state had motion lack it
            text += f"-state{STATE_DIM}"
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    def demo_options(self) -> dict[str, float | int | str | bool]:
        """Non-default data-generation options (``frs_sim.demonstrations`` CLI names)."""
        options: dict[str, float | int | str | bool] = {}
        if self.max_execute_rows not in (None, self.execute_rows):
            options["max-execute-rows"] = self.max_execute_rows
        if self.noisy_fraction > 0:
            options["noisy-fraction"] = self.noisy_fraction
            options["noise-std"] = self.noise_std
            options["noise-offset-std"] = self.noise_offset_std
            options["gripper-flip"] = self.gripper_flip
        if self.phrasing_fraction > 0:
            options["phrasing-fraction"] = self.phrasing_fraction
        if self.redirect_fraction > 0:
            options["redirect-fraction"] = self.redirect_fraction
            if self.redirect_verbs != ",".join(REDIRECT_VERBS):
                options["redirect-verbs"] = self.redirect_verbs
            if self.redirect_in_transit:
                options["redirect-in-transit"] = True  # a bare flag
            if self.redirect_ends_at_new_mat:
                options["redirect-ends-at-new-mat"] = True
        return options

    def check_seeds(self) -> None:
        """Refuse data seeds that could collide with evaluation episodes or held-out splits."""
        if self.split in HELD_OUT_SPLITS:
            raise ValueError(f"split {self.split!r} is held out from training")
        seeds = demo_seeds(self.demo_seed, self.episodes)
        if seeds.start < 0 or seeds.stop > EVAL_SEED_MIN:
            raise ValueError(
                f"demonstration seeds {seeds.start}..{seeds.stop - 1} must lie in "
                f"0..{EVAL_SEED_MIN - 1}: evaluation episodes use seeds >= {EVAL_SEED_MIN}"
            )


#: Named recipes. ``shipped`` (defined last): the checkpoint in
#: frs_steering/checkpoints/generalist. ``first``: the first shipped generalist (clean expert
#: demonstrations of the pretraining split). ``robust``: DART recovery episodes, rows per chunk
#: drawn 1..5 (the first benchmark executed 5), half the episodes phrased with the generated
#: training vocabulary (measured: docs/benchmarks.md, "A robust recipe").
PROFILES: dict[str, GeneralistRecipe] = {
    "first": GeneralistRecipe(),
    "robust": GeneralistRecipe(
        episodes=3000,
        max_execute_rows=5,
        noisy_fraction=0.5,
        phrasing_fraction=0.5,
        steps=5000,
    ),
}
#: ``robust_home``: exploration for issue 15, the robust recipe on ``pretrain_home`` (each cube only
#: ever goes to its one home mat, ``frs_sim.tasks.HOME_PAIRS``).
PROFILES["robust_home"] = dataclasses.replace(PROFILES["robust"], split="pretrain_home")
#: ``robust_anymat``: exploration for issue 15, the robust recipe on ``pretrain_anymat`` (home pairs
#: named, plus place / push onto an unnamed mat drawn per episode). The split has 27 tasks visited
#: round-robin (robust_home: 9), so twice the episodes keep ~2/3 of robust_home's per-task count
#: for lift and the named home pairs.
PROFILES["robust_anymat"] = dataclasses.replace(
    PROFILES["robust"], split="pretrain_anymat", episodes=6000
)
#: ``robust_nearest``: the same on ``pretrain_nearest`` (the unnamed mat is the nearest one).
PROFILES["robust_nearest"] = dataclasses.replace(
    PROFILES["robust_anymat"], split="pretrain_nearest"
)

#: ``robust_habit``: the robust recipe on ``pretrain_habit`` (no mat is ever named; each cube goes
#: to its home mat in 4 of 6 place / push episodes, to each other mat in 1 of 6).
PROFILES["robust_habit"] = dataclasses.replace(
    PROFILES["robust"], split="pretrain_habit", episodes=4500
)
#: ``robust_habit_redirect``: ``robust_habit`` where half the place / push episodes change their
#: mat mid-way (``frs_sim.demonstrations.draw_redirect``): the habit stays the first choice, but
#: heading for any mat is shown from states on the way to another.
PROFILES["robust_habit_redirect"] = dataclasses.replace(
    PROFILES["robust_habit"], redirect_fraction=0.5
)
#: ``robust_habit_redirect_push``: the same with only push episodes redirected.
PROFILES["robust_habit_redirect_push"] = dataclasses.replace(
    PROFILES["robust_habit_redirect"], redirect_verbs="push"
)
#: ``robust_habit_redirect_push_ends``: the same, each redirected episode ending once the cube is
#: on the new mat (the window redirect otherwise idles there until the step limit).
PROFILES["robust_habit_redirect_push_ends"] = dataclasses.replace(
    PROFILES["robust_habit_redirect_push"], redirect_ends_at_new_mat=True
)
#: ``robust_homing_redirect``: ``robust_habit_redirect`` on ``pretrain_homing``: unredirected
#: places and pushes all go home (one destination per cube, the local skill of a named recipe),
#: the other mats are reached only after a redirect.
PROFILES["robust_homing_redirect"] = dataclasses.replace(
    PROFILES["robust_habit_redirect"], split="pretrain_homing"
)
#: ``robust_homing_transit``: the same, redirected only while the cube is on its way (never
#: near the home mat: the data never show a cube set toward a mat and then taken elsewhere).
PROFILES["robust_homing_transit"] = dataclasses.replace(
    PROFILES["robust_homing_redirect"], redirect_in_transit=True
)
#: ``robust_homing_transit_motion``: the same conditioned on the EE velocity as well, so a carry
#: that has turned toward another mat is told apart from one still heading home.
PROFILES["robust_homing_transit_motion"] = dataclasses.replace(
    PROFILES["robust_homing_transit"], motion_state=True
)
#: ``robust_homing_transit_motion_beta``: the same trained with pi0's flow times (noise share
#: Beta(1.5, 1)); the same demonstrations.
PROFILES["robust_homing_transit_motion_beta"] = dataclasses.replace(
    PROFILES["robust_homing_transit_motion"], time_sampling="beta"
)
#: ``robust_homing_transit_motion_beta_lda_6k``: the same reading the instruction through the
#: discriminant directions between tasks, on 6000 demonstrations (every seed below the learners'
#: rollouts) for 7000 steps: the best own-task and held-out-template figures measured.
PROFILES["robust_homing_transit_motion_beta_lda_6k"] = dataclasses.replace(
    PROFILES["robust_homing_transit_motion_beta"], instruction_lda=True, episodes=6000, steps=7000
)
#: ``robust_homing_transit_motion_beta_lda_6k_gentle``: the same with the projection's shrinkage
#: at 0.7, so words no training text holds are not amplified: the held-out vocabulary steered
#: within 10 points of the templates on three training seeds, the held-out templates lower.
PROFILES["robust_homing_transit_motion_beta_lda_6k_gentle"] = dataclasses.replace(
    PROFILES["robust_homing_transit_motion_beta_lda_6k"], instruction_lda_shrinkage=0.7
)
#: ``robust_homing_transit_motion_beta_lda_6k_gentle_noise``: that recipe with Gaussian noise on
#: each training instruction embedding, a paraphrase's spread in every direction: it reads
#: held-out phrasings of the own tasks and steers less precisely (docs/benchmarks.md,
#: "Instruction noise").
PROFILES["robust_homing_transit_motion_beta_lda_6k_gentle_noise"] = dataclasses.replace(
    PROFILES["robust_homing_transit_motion_beta_lda_6k_gentle"], instruction_noise=1.0
)
#: ``robust_homing_transit_motion_beta_lda_6k_gentle_noise_half``: the noise on half of each
#: batch, the other half keeping its exact training text: the held-out phrasings read as with
#: the noise everywhere, the steering kept closer to the recipe without it.
PROFILES["robust_homing_transit_motion_beta_lda_6k_gentle_noise_half"] = dataclasses.replace(
    PROFILES["robust_homing_transit_motion_beta_lda_6k_gentle_noise"], instruction_noise_share=0.5
)
#: ``robust_homing_transit_motion_beta_lda_6k_gentle_noise_quarter``: the noise on a quarter of
#: each batch: the held-out phrasings still read, the steering of places nearer the recipe
#: without noise, the unsteered novel split further from its limit.
PROFILES["robust_homing_transit_motion_beta_lda_6k_gentle_noise_quarter"] = dataclasses.replace(
    PROFILES["robust_homing_transit_motion_beta_lda_6k_gentle_noise"], instruction_noise_share=0.25
)
#: ``shipped``: frs_steering/checkpoints/generalist, the recipe above (docs/benchmarks.md, "The
#: generalist").
PROFILES["shipped"] = PROFILES["robust_homing_transit_motion_beta_lda_6k_gentle_noise_quarter"]
#: ``robust_weighted``: the robust recipe on ``pretrain_weighted`` (all six seen pairs named, each
#: cube's home pair three times as often as its other seen pair).
PROFILES["robust_weighted"] = dataclasses.replace(
    PROFILES["robust"], split="pretrain_weighted", episodes=4500
)


def action_limit_bounds(config: EnvConfig | None = None) -> tuple[list[float], list[float]]:
    """Lower / upper limits of the 7 real action dims (translation, rotation, gripper)."""
    cfg = config or EnvConfig()
    high = [cfg.max_translation] * 3 + [cfg.max_rotation] * 3 + [1.0]
    low = [-v for v in high[:6]] + [0.0]
    return low, high


def fit_action_normalizer(actions: torch.Tensor, config: EnvConfig | None = None):
    """Quantile fit over real-unit ``[..., 7]`` actions, widened to at least the action limits."""
    fitted = fit_normalizer(actions, kind="quantile")
    low, high = action_limit_bounds(config)
    q01 = [min(a, b) for a, b in zip(fitted.q01, low, strict=True)]
    q99 = [max(a, b) for a, b in zip(fitted.q99, high, strict=True)]
    return QuantileNormalizer(q01=q01, q99=q99)


def make_policy(
    normalizer, recipe: GeneralistRecipe = GeneralistRecipe(), projection_dim: int = 0
) -> FlowMatchingPolicy:
    """Fresh generalist with the benchmark's action spec (noise at t=1, openpi style)."""
    spec = ActionSpec(
        horizon=CHUNK_HORIZON,
        dim=ACTION_DIM,
        convention=TimeConvention.NOISE_AT_ONE,
        num_steps=recipe.num_steps,
        real_dims=tuple(range(ACTION_REAL_DIM)),
        normalizer=normalizer,
    )
    config = FlowPolicyConfig(
        action_spec=spec,
        state_dim=recipe.state_dim,
        instruction_dim=EMBEDDING_DIM,
        width=recipe.width,
        depth=recipe.depth,
        encoder_depth=recipe.encoder_depth,
        encoder_width=recipe.encoder_width,
        input_normalization=recipe.input_normalization,
        instruction_projection_dim=projection_dim,
    )
    return FlowMatchingPolicy(config, seed=recipe.seed)


def instruction_classes(demos: DemoSet, split: str) -> list[str]:
    """Per distinct instruction of ``demos`` (tasks of ``split``): the task it asks for, as
    its text can tell (:attr:`TaskSpec.named_task`)."""
    named = [find_task(str(name), split).named_task for name in demos.task_names]
    task_of_text = dict(
        zip(demos.instruction_index.tolist(), demos.task_index.tolist(), strict=True)
    )
    return [named[task_of_text[i]] for i in range(len(demos.instructions))]


def within_task_spread(embeddings: np.ndarray, classes: Sequence[str]) -> float:
    """Root-mean-square deviation per element of each text's embedding from its task's mean
    embedding: how far, element by element, the training phrasings of one task lie apart."""
    texts = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(classes)
    if len(labels) != len(texts) or len(texts) == 0:
        raise ValueError("need one class per embedding and at least one embedding")
    deviations = np.concatenate(
        [texts[labels == label] - texts[labels == label].mean(0) for label in np.unique(labels)]
    )
    return float(np.sqrt(np.mean(deviations**2)))


def load_or_generate_demos(
    recipe: GeneralistRecipe, cache_dir: Path | None = DEFAULT_CACHE, progress: bool = True
) -> DemoSet:
    """Demonstrations for ``recipe`` from the cache, generating (and caching) them if missing."""
    recipe.check_seeds()
    if cache_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return load_or_generate_demos(recipe, Path(tmp), progress)
    path = Path(cache_dir) / f"demos-{recipe.demo_key()}.npz"
    if not path.is_file():
        # A child process: the MiniLM instruction encoder leaves torch/OpenMP worker threads
        # behind that made training in the same process ~5x slower on 2 cores (measured).
        command = [
            sys.executable,
            "-m",
            "frs_sim.demonstrations",
            *("--split", recipe.split, "--episodes", str(recipe.episodes)),
            *("--seed", str(recipe.demo_seed), "--execute-rows", str(recipe.execute_rows)),
            *("--out", str(path)),
            *(() if progress else ("--quiet",)),
            *(
                arg
                for k, v in recipe.demo_options().items()
                for arg in ((f"--{k}",) if v is True else (f"--{k}", str(v)))
            ),
        ]
        env = with_source_path({**os.environ, "HF_HUB_OFFLINE": "1"})
        subprocess.run(command, check=True, env=env)
    return DemoSet.load(path)


def demos_to_tensors(
    demos: DemoSet, state_dim: int = POSITION_STATE_DIM
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(observations {state, instruction}, real-unit actions [N, 10, 7]) from a demo set, the
    state cut to what a policy of ``state_dim`` reads."""
    state = policy_state(demos.state, state_dim)
    observations = {
        "state": torch.from_numpy(np.ascontiguousarray(state, dtype=np.float32)),
        "instruction": torch.from_numpy(np.ascontiguousarray(demos.embedding, dtype=np.float32)),
    }
    actions = torch.from_numpy(np.ascontiguousarray(demos.actions[..., :ACTION_REAL_DIM]))
    return observations, actions.float()


def train_generalist(
    demos: DemoSet, recipe: GeneralistRecipe = GeneralistRecipe(), progress: bool = True
) -> tuple[FlowMatchingPolicy, list[float]]:
    """Fit the normalizer and train a fresh generalist on ``demos``; returns (policy, losses)."""
    torch.manual_seed(recipe.seed)
    observations, actions = demos_to_tensors(demos, recipe.state_dim)
    normalizer = fit_action_normalizer(actions)
    needs_classes = recipe.instruction_lda or recipe.instruction_noise > 0
    classes = instruction_classes(demos, recipe.split) if needs_classes else []
    projection_dim = max(len(set(classes)) - 1, 0) if recipe.instruction_lda else 0
    policy = make_policy(normalizer, recipe, projection_dim=projection_dim)
    if recipe.input_normalization:
        policy.set_input_statistics(observations)
    if recipe.instruction_lda:
        texts = torch.from_numpy(np.asarray(demos.instruction_embeddings, dtype=np.float32))
        standardized = (texts - policy.instruction_shift) * policy.instruction_scale
        projection = fit_discriminant_projection(
            standardized, classes, shrinkage=recipe.instruction_lda_shrinkage
        )
        policy.set_instruction_projection(projection)
    instruction_noise = 0.0
    if recipe.instruction_noise > 0:
        spread = within_task_spread(demos.instruction_embeddings, classes)
        if spread == 0:
            raise ValueError("instruction_noise needs paraphrases: every task has one text here")
        instruction_noise = recipe.instruction_noise * spread
    losses = train_flow_policy(
        policy,
        observations,
        actions,
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        seed=recipe.seed,
        instruction_dropout=recipe.instruction_dropout,
        time_sampling=recipe.time_sampling,
        instruction_noise=instruction_noise,
        instruction_noise_share=recipe.instruction_noise_share,
        progress=progress,
    )
    return policy, losses


def plot_losses(losses: Sequence[float], path: Path, title: str = "generalist training") -> Path:
    """Loss curve (raw and 50-step moving average, log scale) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(losses, dtype=float)
    window = max(1, min(50, len(values) // 5))
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(values, color="0.75", lw=0.6, label="loss")
    ax.plot(np.arange(window - 1, len(values)), smooth, color="C0", lw=1.5, label=f"mean {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def build_generalist(
    out: Path,
    recipe: GeneralistRecipe = GeneralistRecipe(),
    cache_dir: Path | None = DEFAULT_CACHE,
    progress: bool = True,
) -> dict:
    """Whole recipe: demos -> normalizer -> training -> checkpoint + loss PNG + training.json."""
    start = time.perf_counter()
    demos = load_or_generate_demos(recipe, cache_dir, progress)
    demo_s = time.perf_counter() - start
    train_start = time.perf_counter()
    policy, losses = train_generalist(demos, recipe, progress)
    train_s = time.perf_counter() - train_start
    out = Path(out)
    save_policy(policy, out)
    plot_losses(losses, out / "loss.png")
    tail = max(1, len(losses) // 20)
    summary = {
        "recipe": recipe.__dict__,
        "samples": len(demos),
        "demo_episodes": int(len(demos.episode_success)),
        "demo_success_rate": float(np.mean(demos.episode_success)),
        "parameters": policy.num_parameters(),
        "loss_first": float(np.mean(losses[:tail])),
        "loss_last": float(np.mean(losses[-tail:])),
        "demo_seconds": round(demo_s, 1),
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--profile", choices=sorted(PROFILES), default="shipped")
    defaults = PROFILES[pre.parse_known_args(argv)[0].profile]
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="shipped",
        help="named recipe; other options override its fields",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--episodes", type=int, default=defaults.episodes)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--depth", type=int, default=defaults.depth)
    parser.add_argument("--encoder-depth", type=int, default=defaults.encoder_depth)
    parser.add_argument("--encoder-width", type=int, default=defaults.encoder_width)
    parser.add_argument(
        "--no-input-normalization", action="store_true", help="raw state / embedding inputs"
    )
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--split", default=defaults.split)
    parser.add_argument(
        "--redirect-fraction",
        type=float,
        default=defaults.redirect_fraction,
        help="share of mat-unnamed episodes that change their mat mid-way",
    )
    parser.add_argument(
        "--instruction-lda",
        action=argparse.BooleanOptionalAction,
        default=defaults.instruction_lda,
        help="feed the encoder the instruction's discriminant directions between tasks",
    )
    parser.add_argument(
        "--instruction-lda-shrinkage",
        type=float,
        default=defaults.instruction_lda_shrinkage,
        help="the projection's within-task scatter shrinkage, 0..1 (higher: gentler whitening)",
    )
    parser.add_argument(
        "--motion-state",
        action=argparse.BooleanOptionalAction,
        default=defaults.motion_state,
        help="condition on the EE velocity too (a 49-d state instead of 46-d)",
    )
    parser.add_argument(
        "--instruction-dropout",
        type=float,
        default=defaults.instruction_dropout,
        help="share of each training batch whose instruction is withheld (zero vector)",
    )
    parser.add_argument(
        "--instruction-noise",
        type=float,
        default=defaults.instruction_noise,
        help="Gaussian noise on the instruction embedding in training, in units of the "
        "training phrasings' spread around their task (0: none)",
    )
    parser.add_argument(
        "--instruction-noise-share",
        type=float,
        default=defaults.instruction_noise_share,
        help="share of each training batch that gets the instruction noise (the rest: exact texts)",
    )
    parser.add_argument(
        "--time-sampling",
        choices=TIME_SAMPLINGS,
        default=defaults.time_sampling,
        help="how training draws flow times (beta: pi0's, weighted toward the noise)",
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--no-cache", action="store_true", help="regenerate demos, write none")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    if args.profile != "shipped" and args.out == DEFAULT_OUT:
        parser.error("write new profiles to another --out (e.g. build/generalist_robust)")
    try:
        recipe = dataclasses.replace(
            defaults,
            split=args.split,
            episodes=args.episodes,
            steps=args.steps,
            batch_size=args.batch_size,
            width=args.width,
            depth=args.depth,
            encoder_depth=args.encoder_depth,
            encoder_width=args.encoder_width,
            input_normalization=not args.no_input_normalization,
            learning_rate=args.lr,
            seed=args.seed,
            redirect_fraction=args.redirect_fraction,
            instruction_lda=args.instruction_lda,
            instruction_lda_shrinkage=args.instruction_lda_shrinkage,
            motion_state=args.motion_state,
            instruction_dropout=args.instruction_dropout,
            instruction_noise=args.instruction_noise,
            instruction_noise_share=args.instruction_noise_share,
            time_sampling=args.time_sampling,
        )
    except ValueError as error:  # an impossible option: refused before any data is made
        parser.error(str(error))
    summary = build_generalist(
        args.out, recipe, None if args.no_cache else args.cache_dir, progress=not args.quiet
    )
    print(json.dumps(summary, indent=2))
    print(f"checkpoint written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
