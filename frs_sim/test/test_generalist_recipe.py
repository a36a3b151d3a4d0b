"""Issue 15's recipe pieces: held-out vocabulary, DART relabelling, seed disjointness."""

from __future__ import annotations

import numpy as np
import pytest
from test_generalist import fake_embedding  # the one MiniLM stand-in of these tests

from frs_sim.demonstrations import (
    DartNoise,
    DemoSet,
    demo_seeds,
    expert_rollout,
    generate_demos,
)
from frs_sim.env import FrankaTabletopEnv
from frs_sim.evaluate.rollout import EVAL_SEED_MIN, episode_seed
from frs_sim.experts import ScriptedExpert
from frs_sim.phrasing import (
    CANDIDATES,
    SLOTS,
    all_phrasings,
    content_words,
    phrase,
    phrasing_count,
    vocabulary_split,
)
from frs_sim.studies.generalist import PROFILES, GeneralistRecipe, instruction_classes, main
from frs_sim.tasks import (
    HELD_OUT_TEMPLATE_IDS,
    NOVEL_PAIRS,
    PRETRAIN_TEMPLATE_IDS,
    SPLITS,
    TEMPLATES,
    find_task,
)


def _training_texts() -> list[str]:
    texts = [TEMPLATES[v][i] for v in TEMPLATES for i in PRETRAIN_TEMPLATE_IDS]
    return texts + [p for verb in SLOTS for p in all_phrasings(verb, "train")]


# ---------------------------------------------------------------- held-out vocabulary
def test_heldout_vocabulary_shares_no_content_word_with_any_training_text() -> None:
    trained = set().union(*(content_words(t) for t in _training_texts()))
    heldout = [p for verb in SLOTS for p in all_phrasings(verb, "heldout")]
    assert heldout
    leaked = {w for p in heldout for w in content_words(p)} & trained
    assert not leaked, f"held-out phrasings use training words {sorted(leaked)}"


def test_vocabulary_split_is_a_partition_with_both_sides_non_empty() -> None:
    split = vocabulary_split()
    for slot, candidates in CANDIDATES.items():
        train, held = set(split["train"][slot]), set(split["heldout"][slot])
        assert train and held, slot
        assert not train & held, slot
        assert train | held <= set(candidates), slot
    for verb in SLOTS:
        assert phrasing_count(verb, "train") >= 100
        assert phrasing_count(verb, "heldout") >= 20


def test_documented_heldout_templates_stay_out_of_the_training_vocabulary() -> None:
    trained_templates = set().union(
        *(content_words(TEMPLATES[v][i]) for v in TEMPLATES for i in PRETRAIN_TEMPLATE_IDS)
    )
    heldout_only = (
        set().union(
            *(content_words(TEMPLATES[v][i]) for v in TEMPLATES for i in HELD_OUT_TEMPLATE_IDS)
        )
        - trained_templates
    )
    train_vocab = set().union(*(content_words(p) for v in SLOTS for p in all_phrasings(v, "train")))
    assert not train_vocab & heldout_only


def test_phrasings_are_deterministic_and_name_the_task_colours() -> None:
    vocabulary_split.cache_clear()
    first = phrase("push", "red", "yellow", 17, "heldout")
    vocabulary_split.cache_clear()
    assert phrase("push", "red", "yellow", 17, "heldout") == first
    texts = {phrase("place", "green", "purple", i, "heldout") for i in range(20)}
    assert len(texts) == 20
    assert all("green" in t and "purple" in t for t in texts)
    with pytest.raises(ValueError):
        phrase("push", "red", "yellow", phrasing_count("push", "heldout"), "heldout")
    with pytest.raises(ValueError):
        phrase("push", "red", "yellow", 0, "test")


def test_vocab_splits_keep_the_colour_pair_design() -> None:
    for name in ("novel_vocab", "paraphrase_vocab", "pretrain_vocab"):
        base = {"novel_vocab": "novel", "paraphrase_vocab": "paraphrase"}.get(name, "pretrain")
        assert [t.name for t in SPLITS[name]] == [t.name for t in SPLITS[base]]
    assert all((t.obj, t.target) in NOVEL_PAIRS for t in SPLITS["novel_vocab"])
    assert all((t.obj, t.target) not in NOVEL_PAIRS for t in SPLITS["pretrain_vocab"])
    assert {t.vocabulary for t in SPLITS["novel_vocab"]} == {"heldout"}
    assert {t.vocabulary for t in SPLITS["pretrain_vocab"]} == {"train"}
    train_texts = {s for t in SPLITS["pretrain_vocab"][:3] for s in t.instructions()}
    held_texts = {s for t in SPLITS["paraphrase_vocab"][:3] for s in t.instructions()}
    assert not train_texts & held_texts


# ---------------------------------------------------------------- DART relabelling
def test_dart_labels_are_the_expert_chunk_at_every_visited_state() -> None:
    task = find_task("place_red_purple", "pretrain")
    env = FrankaTabletopEnv(tasks=[task], embed_fn=fake_embedding)
    expert = ScriptedExpert()
    noise = DartNoise(translation_std=0.01, chunk_offset_std=0.005, gripper_flip=0.2)
    rollout = expert_rollout(env, expert, task, 3, np.random.default_rng(5), (1, 5), noise)
    assert len(rollout.labels) >= 3
    perturbed = [
        not np.allclose(sent, label[: len(sent)])
        for sent, label in zip(rollout.executed, rollout.labels, strict=True)
    ]
    assert all(perturbed), "every executed chunk carries noise"
    assert {len(sent) for sent in rollout.executed} != {1}, "rows per chunk are drawn"
    # Replay the executed rows on a fresh reset: the same states come back, and the recorded
    # label is what the expert plans there (a relabel bug would store the noisy rows instead).
    obs, _ = env.reset(seed=3, options={"task": task})
    for recorded, label, sent, step in zip(
        rollout.observations, rollout.labels, rollout.executed, rollout.steps, strict=True
    ):
        np.testing.assert_array_equal(obs["state"], recorded["state"])
        np.testing.assert_array_equal(expert(obs, task), label)
        assert env._steps == step
        obs = env.execute_chunk(sent, n_rows=len(sent)).last_observation
    env.close()


def test_noisy_episodes_are_kept_and_default_generation_is_unchanged() -> None:
    tasks = [find_task("lift_red"), find_task("push_green_yellow")]
    clean = generate_demos(tasks, episodes=2, seed=0, progress=False, embed_fn=fake_embedding)
    assert clean.meta["noisy_episodes_kept"] == 0
    assert np.array_equal(
        clean.step_index[: clean.episode_length[0]],
        np.arange(len(clean))[: clean.episode_length[0]],
    )
    mixed = generate_demos(
        tasks,
        episodes=4,
        seed=0,
        progress=False,
        embed_fn=fake_embedding,
        max_execute_rows=4,
        noise=DartNoise(gripper_flip=0.5),
        noisy_fraction=1.0,
        phrasing_fraction=1.0,
    )
    assert mixed.meta["noisy_episodes_kept"] == 4  # kept even when the perturbed run failed
    assert len(set(mixed.episode_index.tolist())) == 4
    assert all(t not in {s for v in TEMPLATES.values() for s in v} for t in mixed.instructions)
    for episode in range(4):
        steps = mixed.step_index[mixed.episode_index == episode]
        assert steps[0] == 0 and np.all(np.diff(steps) >= 1) and np.all(np.diff(steps) <= 4)
    with pytest.raises(ValueError):
        generate_demos(tasks, episodes=1, noisy_fraction=0.5, embed_fn=fake_embedding)
    with pytest.raises(ValueError):
        DartNoise(translation_std=-0.1)


# ---------------------------------------------------------------- seed disjointness
def test_training_seeds_never_reach_evaluation_seeds() -> None:
    for name, recipe in PROFILES.items():
        recipe.check_seeds()  # raises if any profile's data could replay an evaluation layout
        assert max(demo_seeds(recipe.demo_seed, recipe.episodes)) < EVAL_SEED_MIN, name
    with pytest.raises(ValueError, match="seeds"):
        GeneralistRecipe(episodes=EVAL_SEED_MIN + 1).check_seeds()
    with pytest.raises(ValueError, match="seeds"):
        GeneralistRecipe(demo_seed=EVAL_SEED_MIN - 5, episodes=10).check_seeds()
    with pytest.raises(ValueError, match="held out"):
        GeneralistRecipe(split="novel").check_seeds()


def test_evaluation_seeds_are_distinct_and_above_the_training_range() -> None:
    seeds = [episode_seed(s, t, e) for s in range(3) for t in range(21) for e in range(100)]
    assert min(seeds) >= EVAL_SEED_MIN
    assert len(set(seeds)) == len(seeds)
    for bad in ((0, 0, 100), (0, 100, 0), (-1, 0, 0)):
        with pytest.raises(ValueError):
            episode_seed(*bad)


def test_learner_rollout_seeds_stay_between_the_demonstrations_and_evaluation() -> None:
    """DSBC's and DSRL's FRS rollouts are training data: below every evaluation seed (the
    3-seed benchmark evaluates seeds 0-2, so a rollout at evaluation seed 1 would leak), and
    above the shipped recipes' demonstrations."""
    from frs_sim.evaluate.rollout import LEARNER_SEED_MIN, Setting, learner_episode_seed, make_jobs

    seeds = [learner_episode_seed(s, t, e) for s in range(4) for t in range(10) for e in range(100)]
    assert min(seeds) >= LEARNER_SEED_MIN and max(seeds) < EVAL_SEED_MIN
    assert len(set(seeds)) == len(seeds)
    for name, recipe in PROFILES.items():
        assert max(demo_seeds(recipe.demo_seed, recipe.episodes)) < LEARNER_SEED_MIN, name
    for bad in ((4, 0, 0), (0, 10, 0), (0, 0, 100), (-1, 0, 0)):
        with pytest.raises(ValueError):
            learner_episode_seed(*bad)
    jobs = make_jobs([Setting("frs", split="novel")], 100, [0], env_seed=learner_episode_seed)
    evaluation = make_jobs([Setting("frs", split="novel")], 100, range(10))
    assert not {seed for *_, seed in jobs} & {seed for *_, seed in evaluation}


def test_recipe_demo_key_keeps_old_caches_and_separates_new_data() -> None:
    assert GeneralistRecipe().demo_options() == {}
    keys = {GeneralistRecipe().demo_key(), *(r.demo_key() for r in PROFILES.values())}
    data = {
        (r.split, r.episodes, r.demo_seed, r.execute_rows, repr(r.demo_options()), r.motion_state)
        for r in PROFILES.values()
    }
    assert len(keys) == len(data)  # one cache per distinct demonstration set, none shared
    assert PROFILES["robust"].demo_options()["noisy-fraction"] > 0
    motion = PROFILES["robust_homing_transit_motion"]
    assert motion.state_dim == 49 and PROFILES["robust_homing_transit"].state_dim == 46


def test_instruction_classes_are_the_task_the_text_names_not_the_hidden_mat() -> None:
    names = ["place_red_anymat_yellow", "place_red_anymat_white", "push_blue_yellow", "lift_green"]
    texts = ["put the red cube on a mat", "push the blue cube to the yellow mat", "lift green"]
    episodes = [(0, 0), (0, 1), (1, 2), (2, 3)]  # (instruction, task) per sample
    n = len(episodes)
    empty = np.zeros((n, 1))
    demos = DemoSet(
        state=empty,
        embedding=empty,
        actions=empty,
        instruction_index=np.array([i for i, _ in episodes]),
        instructions=np.array(texts),
        instruction_embeddings=np.zeros((len(texts), 1)),
        task_index=np.array([t for _, t in episodes]),
        task_names=np.array(names),
        episode_index=np.arange(n),
        step_index=np.zeros(n, dtype=int),
        episode_seed=np.arange(n),
        episode_length=np.ones(n, dtype=int),
        episode_task=np.arange(n),
        episode_success=np.ones(n, dtype=bool),
    )
    classes = instruction_classes(demos, "pretrain_anymat")
    assert classes == ["place_red", "push_blue_yellow", "lift_green"]
    assert find_task("place_red_onanymat", "habit_own").named_task == "place_red"
    with pytest.raises(ValueError, match="no task named"):
        instruction_classes(demos, "pretrain_home")  # a task the split does not hold


@pytest.mark.parametrize(
    "field, value",
    [
        ("instruction_dropout", 1.0),
        ("instruction_dropout", float("nan")),
        ("instruction_dropout", -0.1),
        ("steps", 0),
        ("learning_rate", float("inf")),
        ("phrasing_fraction", 1.5),
        ("time_sampling", "logit_normal"),
        ("instruction_lda_shrinkage", 1.5),
        ("instruction_lda_shrinkage", float("nan")),
        ("instruction_noise", -1.0),
        ("instruction_noise", float("nan")),
        ("instruction_noise_share", 0.0),
        ("instruction_noise_share", 1.5),
    ],
)
def test_an_impossible_training_option_is_refused_by_the_recipe(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        GeneralistRecipe(**{field: value})


def test_the_cli_refuses_an_impossible_option_before_making_any_data(tmp_path, capsys) -> None:
    """Refused as a usage error at once: not after minutes of demonstrations (a cold cache)."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["--instruction-dropout", "1.5", "--cache-dir", str(cache), "--out", str(out)])
    assert exit_info.value.code == 2
    assert "instruction_dropout must be in [0, 1)" in capsys.readouterr().err
    assert not cache.exists() and not out.exists()
