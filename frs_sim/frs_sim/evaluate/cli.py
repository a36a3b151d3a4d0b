"""Closed-loop evaluation of steering methods on the simulated benchmark.

``python -m frs_sim.evaluate --checkpoint frs_steering/checkpoints/generalist
--split novel --episodes-per-task 10 --seeds 0 --out build/eval`` compares base, direct,
partial noising (sweep of the noise level), sample-and-rank (sweep of N) and FRS (sweep of step
counts and solvers), plus a base-policy sanity row on the checkpoint's own tasks, and writes
``results.json``, ``results.md``, ``success.png`` and ``episode.png``
(:mod:`frs_sim.evaluate.results`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from frs_sim.env import EnvConfig
from frs_sim.evaluate.results import evaluate
from frs_sim.evaluate.rollout import METHODS, EvalConfig, Setting, default_settings
from frs_sim.reasoner import DEFER_POINTS, ReasonerConfig
from frs_steering.checkpoint import load_policy


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def add_reasoner_arguments(parser: argparse.ArgumentParser) -> None:
    """The scripted reasoner's knobs as flags (defaults: ``ReasonerConfig``'s); read them back
    with :func:`reasoner_config`."""
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
        "--command-release",
        action=argparse.BooleanOptionalAction,
        default=defaults.command_release,
        help="the reasoner opens the gripper at the release point instead of deferring there",
    )
    parser.add_argument(
        "--drop-radius",
        type=float,
        default=defaults.drop_radius,
        help="the reasoner opens the gripper once the held cube is this close to the mat centre "
        "(horizontally, any height; 0: off)",
    )
    parser.add_argument(
        "--fine-radius",
        type=float,
        default=defaults.fine_radius,
        help="'a little' (0.25) within this distance of the sub-goal (0: never)",
    )
    parser.add_argument(
        "--command-grasp",
        action=argparse.BooleanOptionalAction,
        default=defaults.command_grasp,
        help="the reasoner steers to the grasp point and closes the gripper there instead of "
        "handing the grasp over",
    )
    parser.add_argument(
        "--state-gripper",
        action=argparse.BooleanOptionalAction,
        default=defaults.state_gripper,
        help="the reasoner says the gripper state of the phase with every motion (open toward "
        "a grasp, closed while carrying or pushing)",
    )
    parser.add_argument(
        "--aim-error",
        type=float,
        default=defaults.aim_error,
        help="metres: every episode the reasoner perceives each cube and mat this far off its "
        "centre (a random horizontal direction) and aims there",
    )
    parser.add_argument(
        "--defer-at",
        default=",".join(defaults.defer_at),
        help="precision points where the reasoner hands over to the policy "
        f"(comma-separated subset of {','.join(DEFER_POINTS)}; empty: none)",
    )


def reasoner_config(args: argparse.Namespace) -> ReasonerConfig:
    """The ``ReasonerConfig`` of flags added by :func:`add_reasoner_arguments`."""
    return ReasonerConfig(
        defer_radius=args.defer_radius,
        slow_radius=args.slow_radius,
        quantize=not args.no_quantize,
        angular_noise_deg=args.angular_noise,
        wrong_direction_rate=args.wrong_rate,
        command_release=args.command_release,
        drop_radius=args.drop_radius,
        fine_radius=args.fine_radius,
        command_grasp=args.command_grasp,
        state_gripper=args.state_gripper,
        aim_error=args.aim_error,
        defer_at=tuple(p.strip() for p in args.defer_at.split(",") if p.strip()),
    )


def learned_policy_settings(args: argparse.Namespace, settings: list[Setting]) -> list[Setting]:
    """The rows that ``--reference-policy`` (with ``--residual-policy``), ``--learned-reversal``
    and ``--noise-policy`` add, each checkpoint checked against the flow policy's observation
    and chunk shape before any episode runs."""
    from frs_steering.learning.noise_policy import load_checked_noise_policy
    from frs_steering.learning.observation_input import REFERENCE_ROW, reads_reference
    from frs_steering.learning.reference_policy import load_checked_reference_policy

    if args.residual_policy is not None and args.reference_policy is None:
        raise ValueError("--residual-policy moves FRS toward a reference policy: give one")
    if args.reference_policy is None and not args.noise_policy and args.learned_reversal is None:
        return []
    policy = load_policy(args.checkpoint)
    added: list[Setting] = []
    proposer = None
    if args.reference_policy is not None:
        proposer = load_checked_reference_policy(args.reference_policy, policy)
        tag, extra = "reference cloning", {}
        if args.residual_policy is not None:
            residual = load_checked_noise_policy(args.residual_policy, policy)
            tag, extra = "reference cloning + residual", {"residual_policy": residual}
        added += [
            replace(s, tag=tag, proposer=proposer, params={**s.params, **extra})
            for s in settings
            if s.method == "frs"
        ]
    if args.learned_reversal is not None:
        reversal = load_checked_noise_policy(args.learned_reversal, policy)
        if REFERENCE_ROW not in reversal.config.observation_dims:
            raise ValueError(f"--learned-reversal {args.learned_reversal} reads no reference")
        learned = Setting(
            "learned_reversal", {"reversal": reversal}, split=args.split, tag="learned reversal"
        )
        added.append(learned)
        if proposer is not None:
            tag = "reference cloning + learned reversal"
            added.append(replace(learned, tag=tag, proposer=proposer))
    names = [path.resolve().name for path in args.noise_policy]
    if len(set(names)) != len(names):
        raise ValueError(f"--noise-policy folders need distinct names (row labels), got {names}")
    for path, name in zip(args.noise_policy, names, strict=True):
        net = load_checked_noise_policy(path, policy)
        if reads_reference(net.config.observation_dims):
            raise ValueError(f"--noise-policy {path} reads a reference: pass --learned-reversal")
        added += [
            Setting(
                "noise_policy", {"noise_policy": net}, split=args.split, tag=name, temperature=t
            )
            for t in _floats(args.temperatures)
        ]
    return added


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m frs_sim.evaluate", description=__doc__.splitlines()[0]
    )
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
    parser.add_argument(
        "--temperatures",
        default="1",
        help="sampling temperatures (scale of the policy's fresh noise; 1: plain sampling), "
        "every method at each",
    )
    parser.add_argument(
        "--reference-policy",
        type=Path,
        default=None,
        help="a reference-policy checkpoint: also run each FRS setting with its proposals in "
        "place of the scripted reasoner ('frs (reference cloning)')",
    )
    parser.add_argument(
        "--residual-policy",
        type=Path,
        default=None,
        help="with --reference-policy: a noise policy whose output moves FRS's noise in those "
        "rows (a DSRL + FRS actor trained around that reference policy; 'reference cloning + "
        "residual')",
    )
    parser.add_argument(
        "--learned-reversal",
        type=Path,
        default=None,
        help="a learned-reversal checkpoint (the DSBC study's learned_reversal/): also run FRS "
        "with it in place of the flow's reversal, with the scripted reasoner and, given "
        "--reference-policy, with that policy's proposals",
    )
    parser.add_argument(
        "--noise-policy",
        type=Path,
        action="append",
        default=[],
        help="a noise-policy checkpoint (DSBC, DSRL): also run it, without a reasoner, as "
        "'noise_policy (<folder name>)'; repeat for more",
    )
    parser.add_argument("--execute-rows", type=int, default=EvalConfig.execute_rows)
    parser.add_argument(
        "--reasoner-every",
        type=int,
        default=EvalConfig.reasoner_every,
        help="the reasoner answers every N chunks; the chunks between re-use its last proposal",
    )
    add_reasoner_arguments(parser)
    parser.add_argument(
        "--sanity-episodes-per-task",
        type=int,
        default=2,
        help="base-policy episodes per task of the sanity row (0: skip)",
    )
    parser.add_argument(
        "--sanity-split",
        help="split of the sanity row (default: the checkpoint's own tasks, read from its "
        "training.json; pretrain without one)",
    )
    parser.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=EnvConfig.max_episode_steps,
        help="control steps before an episode times out",
    )
    parser.add_argument(
        "--withhold-instruction",
        action="store_true",
        help="give the policy no instruction (the zero vector; for policies trained with "
        "instruction dropout): what it does on the reasoner alone",
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
        temperatures=_floats(args.temperatures),
    )
    try:
        settings += learned_policy_settings(args, settings)
    except (ValueError, OSError) as error:  # CheckpointError included: nothing has run yet
        parser.error(str(error))
    reasoner = reasoner_config(args)
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
            reasoner_every=args.reasoner_every,
            reasoner=reasoner,
            env=EnvConfig(max_episode_steps=args.max_steps),
            tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()) or None,
            withhold_instruction=args.withhold_instruction,
        ),
        sanity_episodes_per_task=args.sanity_episodes_per_task,
        sanity_split=args.sanity_split,
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
