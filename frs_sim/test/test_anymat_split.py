"""Issue 15 exploration "any mat": home pairs named, place / push onto an unnamed mat.

``pretrain_anymat`` draws the unnamed mat per episode; its follow-up ``pretrain_nearest`` says
"the nearest mat" and lays the scene out so that it is.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_generalist import fake_embedding  # the one MiniLM stand-in of these tests

from frs_sim.demonstrations import (
    REDIRECT_STEPS,
    REDIRECT_TRANSIT_STEPS,
    TRANSIT_MIN_DISTANCE,
    TRANSIT_MIN_MOVE,
    DemoSet,
    draw_redirect,
    expert_rollout,
    generate_demos,
)
from frs_sim.env import MAT_SUCCESS_HALF, FrankaTabletopEnv
from frs_sim.experts import ScriptedExpert, run_expert_episode
from frs_sim.phrasing import (
    COLOUR_WORDS,
    SLOTS,
    all_phrasings,
    content_words,
    phrase,
    phrasing_count,
    words,
)
from frs_sim.scene import OBJECT_NAMES, TARGET_NAMES
from frs_sim.tasks import (
    HELD_OUT_SPLITS,
    HELD_OUT_TEMPLATE_IDS,
    HOME_PAIRS,
    NEAREST_TEMPLATES,
    NOVEL_PAIRS,
    PRETRAIN_TEMPLATE_IDS,
    SPLITS,
    TEMPLATES,
    UNNAMED_TASKS,
    UNNAMED_TEMPLATES,
    TaskSpec,
)

ANYMAT = (
    "pretrain_anymat",
    "pretrain_anymat_vocab",
    "pretrain_nearest",
    "pretrain_nearest_vocab",
    "pretrain_habit",
    "pretrain_habit_vocab",
)
NEAREST_TASKS = tuple(t for t in SPLITS["pretrain_nearest"] if not t.names_target)
EXPERT_SEEDS_PER_TASK = 10


def _texts(split: str) -> set[str]:
    return {text for task in SPLITS[split] for text in task.instructions()}


def _sampled_instructions(task: TaskSpec) -> tuple[str, ...]:
    """Every template, or every 29th generated phrasing (push has 35200; all take ~1 min)."""
    ids = task.template_ids if task.vocabulary == "templates" else task.template_ids[::29]
    return tuple(task.instruction(i) for i in ids)


@pytest.mark.parametrize("base", ["pretrain_anymat", "pretrain_nearest"])
def test_named_tasks_are_exactly_pretrain_home_and_unnamed_cover_every_cube_verb_mat(
    base: str,
) -> None:
    anymat = SPLITS[base]
    named = [t for t in anymat if t.names_target]
    assert [t.name for t in named] == [t.name for t in SPLITS["pretrain_home"]]
    assert {(t.obj, t.target) for t in named if t.target} == set(HOME_PAIRS)
    unnamed = [t for t in anymat if not t.names_target]
    nearest = base == "pretrain_nearest"
    assert [dataclasses.replace(t, nearest_mat=False) for t in unnamed] == list(UNNAMED_TASKS)
    assert all(t.nearest_mat == nearest for t in unnamed)
    assert sorted((t.verb, t.obj, t.target) for t in unnamed) == sorted(
        (v, c, m) for v in ("place", "push") for c in OBJECT_NAMES for m in TARGET_NAMES
    )
    assert all(t.template_ids == PRETRAIN_TEMPLATE_IDS for t in anymat)
    assert len({t.name for t in anymat}) == len(anymat) == 9 + 18
    vocab = SPLITS[f"{base}_vocab"]
    assert [t.name for t in vocab] == [t.name for t in anymat]
    assert {t.vocabulary for t in vocab} == {"train"}
    assert not set(ANYMAT) & set(HELD_OUT_SPLITS)
    if nearest:
        assert all("nearest" in t.instruction(0) for t in vocab if not t.names_target)


@pytest.mark.parametrize("split", ANYMAT)
def test_no_training_text_names_a_non_home_pair(split: str) -> None:
    """The novel colour pairs stay unseen in every NAMED phrasing of the split."""
    mats = set(TARGET_NAMES)
    for task in SPLITS[split]:
        for text in _sampled_instructions(task):
            named_mats = words(text) & mats
            if task.names_target:
                assert named_mats == ({task.target} if task.target else set()), text
            else:
                assert not named_mats, text
                assert task.obj in words(text)
            assert not any({c, m} <= words(text) for c, m in NOVEL_PAIRS), text


@pytest.mark.parametrize("split", ANYMAT)
def test_an_unnamed_instruction_does_not_depend_on_the_drawn_mat(split: str) -> None:
    by_cube_verb: dict[tuple[str, str], set[tuple[str, ...]]] = {}
    for task in SPLITS[split]:
        if not task.names_target:
            by_cube_verb.setdefault((task.verb, task.obj), set()).add(_sampled_instructions(task))
    assert len(by_cube_verb) == 6
    assert all(len(texts) == 1 for texts in by_cube_verb.values())


def test_habit_names_no_mat_and_sends_each_cube_home_in_four_of_six_episodes() -> None:
    habit = SPLITS["pretrain_habit"]
    assert all(not t.names_target for t in habit if t.verb != "lift")
    home = dict(HOME_PAIRS)
    for verb in ("place", "push"):
        for cube in OBJECT_NAMES:
            mats = [t.target for t in habit if (t.verb, t.obj) == (verb, cube)]
            assert len(mats) == 6 and mats.count(home[cube]) == 4
            assert set(mats) == set(TARGET_NAMES)
    assert sum(t.verb == "lift" for t in habit) * 5 == len(habit)
    assert all(t.template_ids == PRETRAIN_TEMPLATE_IDS for t in habit)
    for split, ids in (("habit_home", PRETRAIN_TEMPLATE_IDS), ("habit_home_paraphrase", None)):
        tasks = SPLITS[split]
        assert len({t.name for t in tasks}) == len(tasks) == 9
        assert all(t.verb == "lift" or home[t.obj] == t.target for t in tasks)
        assert all(t.template_ids == (ids or HELD_OUT_TEMPLATE_IDS) for t in tasks)
    assert "habit_home_paraphrase" in HELD_OUT_SPLITS and "habit_home" not in HELD_OUT_SPLITS
    for own, home_split in (("habit_own", "habit_home"), ("habit_own_paraphrase", None)):
        home_split = home_split or "habit_home_paraphrase"
        pairs = zip(SPLITS[own], SPLITS[home_split], strict=True)
        for any_task, home_task in pairs:
            assert any_task.any_mat == (home_task.verb != "lift")
            assert any_task.instructions() == home_task.instructions()
    assert "habit_own_paraphrase" in HELD_OUT_SPLITS and "habit_own" not in HELD_OUT_SPLITS


@pytest.mark.parametrize("nearest", [False, True], ids=["anymat", "nearest"])
def test_unnamed_phrasings_keep_held_out_words_out_of_training(nearest: bool) -> None:
    templates = NEAREST_TEMPLATES if nearest else UNNAMED_TEMPLATES
    unnamed = "the nearest" if nearest else "any"
    trained = [templates[v][i] for v in templates for i in PRETRAIN_TEMPLATE_IDS]
    generated = [
        phrase(v, "{obj}", None, i, "train", unnamed)
        for v in ("place", "push")
        for i in range(phrasing_count(v, "train"))
    ]
    train_words = {w for t in trained + generated for w in content_words(t)}
    heldout_words = {
        w for verb in SLOTS for p in all_phrasings(verb, "heldout") for w in content_words(p)
    }
    assert not train_words & heldout_words
    assert not train_words & COLOUR_WORDS
    named_train = {
        w for v in TEMPLATES for i in PRETRAIN_TEMPLATE_IDS for w in content_words(TEMPLATES[v][i])
    }
    documented_heldout_only = {
        w for v in TEMPLATES for i in HELD_OUT_TEMPLATE_IDS for w in content_words(TEMPLATES[v][i])
    } - named_train
    template_words = {w for t in trained for w in content_words(t)}
    assert not template_words & documented_heldout_only
    # the only new training words say "some mat" / "the nearest mat": no held-out phrasing
    new_words = {"any", "one", "of", "mats", "pads", "squares", "targets", "nearest", "closest"}
    assert template_words - named_train <= new_words
    held = {templates[v][i].format(obj="red") for v in templates for i in HELD_OUT_TEMPLATE_IDS}
    assert not held & (_texts("pretrain_anymat") | _texts("pretrain_nearest"))


def test_unnamed_spec_validation_and_names() -> None:
    task = TaskSpec("push", "red", "yellow", (0, 6), names_target=False)
    assert task.name == "push_red_anymat_yellow"
    assert task.instruction(6) == "slide the red cube across the table onto a pad"
    assert "yellow" not in task.with_vocabulary("heldout").instruction(3)
    with pytest.raises(ValueError):
        TaskSpec("lift", "red", None, (0,), names_target=False)
    with pytest.raises(ValueError):
        TaskSpec("place", "red", None, (0,), names_target=False)  # the expert still needs a mat
    with pytest.raises(ValueError):
        TaskSpec("place", "red", "white", (0,), nearest_mat=True)  # a named mat is not "nearest"
    near = TaskSpec("place", "red", "white", (0,), names_target=False, nearest_mat=True)
    assert near.name == "place_red_nearestmat_white"
    assert near.instruction(0) == "put the red cube on the nearest mat"
    assert near.with_vocabulary("train").nearest_mat
    anywhere = TaskSpec("push", "red", "yellow", (0,), names_target=False, any_mat=True)
    assert anywhere.name == "push_red_onanymat"
    assert anywhere.instruction(0) == task.instruction(0)
    with pytest.raises(ValueError, match="any_mat"):
        TaskSpec("push", "red", "yellow", (0,), any_mat=True)  # a named mat is the only one
    with pytest.raises(ValueError, match="any_mat"):
        TaskSpec("push", "red", "yellow", (0,), names_target=False, nearest_mat=True, any_mat=True)


def test_the_nearest_mat_is_the_tasks_mat_and_other_layouts_are_unchanged() -> None:
    env = FrankaTabletopEnv(tasks=list(NEAREST_TASKS), embed_fn=fake_embedding)
    swapped = 0
    for task in NEAREST_TASKS:
        for seed in range(5):
            obs, _ = env.reset(seed=seed, options={"task": task})
            cube = obs["object_pos"][task.object_index][:2]
            mats = obs["target_pos"][:, :2]
            assert int(np.argmin(np.linalg.norm(mats - cube, axis=1))) == task.target_index
            plain = dataclasses.replace(task, nearest_mat=False)
            other, _ = env.reset(seed=seed, options={"task": plain})
            np.testing.assert_array_equal(other["object_pos"], obs["object_pos"])
            assert sorted(map(tuple, other["target_pos"])) == sorted(map(tuple, obs["target_pos"]))
            swapped += not np.array_equal(other["target_pos"], obs["target_pos"])
    env.close()
    assert swapped > 0  # the swap did happen where the drawn layout disagreed


def test_the_environment_draws_the_unnamed_mat_with_the_episode_seed() -> None:
    tasks = [t for t in UNNAMED_TASKS if t.verb == "place" and t.obj == "red"]
    env = FrankaTabletopEnv(tasks=tasks, embed_fn=fake_embedding)
    drawn = []
    for seed in range(30):
        env.reset(seed=seed)
        drawn.append(env.task.target)
        assert env.instruction in tasks[0].instructions()
    env.reset(seed=4)
    again = env.task.target
    env.close()
    assert again == drawn[4]
    assert set(drawn) == set(TARGET_NAMES)


@pytest.mark.parametrize("tasks", [UNNAMED_TASKS, NEAREST_TASKS], ids=["anymat", "nearest"])
def test_expert_solves_every_unnamed_task(tasks: tuple[TaskSpec, ...]) -> None:
    """>= 90 % over 10 seeds per task (anymat: the same episodes as the named task to that mat)."""
    env = FrankaTabletopEnv(tasks=list(tasks), embed_fn=fake_embedding)
    expert = ScriptedExpert()
    failures = []
    for task in tasks:
        wins = [
            run_expert_episode(env, expert, seed=2000 + s, task=task)[0]
            for s in range(EXPERT_SEEDS_PER_TASK)
        ]
        if np.mean(wins) < 0.9:
            failures.append((task.name, wins))
    env.close()
    assert not failures, failures


def test_anymat_profile() -> None:
    from frs_sim.studies.generalist import PROFILES

    for name in ("robust_anymat", "robust_nearest"):
        recipe = PROFILES[name]
        assert recipe.split == "pretrain_" + name.removeprefix("robust_")
        recipe.check_seeds()
    names = ("robust", "robust_home", "robust_anymat", "robust_nearest")
    assert len({PROFILES[p].demo_key() for p in names}) == 4


def test_a_redirected_expert_ends_on_the_new_mat_and_labels_change_only_after_the_step() -> None:
    """Redirect (habit follow-up): the labels head for the first mat until the step, then the
    second; the cube ends on the second mat, so the data show turning toward any mat."""
    task = next(t for t in UNNAMED_TASKS if t.verb == "place" and t.obj == "green")
    env = FrankaTabletopEnv(tasks=[task], embed_fn=fake_embedding)
    expert = ScriptedExpert()
    rng = np.random.default_rng(3)
    redirect = draw_redirect(task, rng)
    assert redirect.task.target != task.target and not redirect.task.names_target
    assert REDIRECT_STEPS[0] <= redirect.step <= REDIRECT_STEPS[1]
    late = dataclasses.replace(redirect, step=20)
    rollout = expert_rollout(env, expert, task, 2100, rng, redirect=late)
    for obs, label, step in zip(rollout.observations, rollout.labels, rollout.steps, strict=True):
        heading = late.task if step >= late.step else task
        np.testing.assert_array_equal(label, expert(obs, heading))
    cube = env.object_positions()[task.obj][:2]
    new_mat = env.target_positions()[late.task.target][:2]
    old_mat = env.target_positions()[task.target][:2]
    assert not rollout.success  # the environment still checks the first mat ...
    assert np.linalg.norm(cube - new_mat) < 0.03 < np.linalg.norm(cube - old_mat)
    assert rollout.steps[-1] >= 70  # ... so the episode idled there until the step limit
    ending = dataclasses.replace(late, ends_at_new_mat=True)
    ended = expert_rollout(env, expert, task, 2100, np.random.default_rng(3), redirect=ending)
    env.close()
    assert ended.success and ended.redirected_at == rollout.redirected_at
    assert ended.steps[-1] < 60 and len(ended.labels) < len(rollout.labels)
    assert draw_redirect(task, rng, in_transit=True).ends_at_new_mat
    assert draw_redirect(task, rng, ends_at_new_mat=True).ends_at_new_mat
    with pytest.raises(ValueError, match="mat-unnamed"):
        draw_redirect(SPLITS["pretrain"][5], rng)


@pytest.mark.parametrize("verb", ["place", "push"])
def test_an_in_transit_redirect_changes_the_mat_only_while_the_cube_is_on_its_way(
    verb: str,
) -> None:
    """In transit: never before the cube moves, never once it is near the first mat; episodes
    whose cube starts near that mat are not redirected at all."""
    task = next(t for t in UNNAMED_TASKS if t.verb == verb and t.obj == "red")
    env = FrankaTabletopEnv(tasks=[task], embed_fn=fake_embedding)
    expert = ScriptedExpert()
    rng = np.random.default_rng(5)
    assert REDIRECT_TRANSIT_STEPS[0] <= draw_redirect(task, rng, True).step
    outcomes, changed_and_done = [], []
    for seed in range(3000, 3012):
        redirect = dataclasses.replace(draw_redirect(task, rng, in_transit=True), step=0)
        rollout = expert_rollout(env, expert, task, seed, rng, (1, 3), redirect=redirect)
        first = rollout.observations[0]
        start = np.asarray(first["object_pos"][task.object_index])
        mat = np.asarray(first["target_pos"][task.target_index])[:2]
        at = rollout.redirected_at
        outcomes.append(at is not None)
        for obs, label, step in zip(
            rollout.observations, rollout.labels, rollout.steps, strict=True
        ):
            heading = redirect.task if at is not None and step >= at else task
            np.testing.assert_array_equal(label, expert(obs, heading))
            if at is not None and step == at:
                cube = np.asarray(obs["object_pos"][task.object_index])
                assert np.linalg.norm(cube - start) >= TRANSIT_MIN_MOVE
                assert np.linalg.norm(cube[:2] - mat) > TRANSIT_MIN_DISTANCE
        if np.linalg.norm(start[:2] - mat) <= TRANSIT_MIN_DISTANCE:
            assert at is None  # never far from the first mat once moving
        if at is not None and rollout.success:  # it ended there: no idling over the new mat
            cube = env.object_positions()[task.obj][:2]
            new_mat = env.target_positions()[redirect.task.target][:2]
            assert np.all(np.abs(cube - new_mat) <= MAT_SUCCESS_HALF)
            changed_and_done.append(rollout.steps[-1])
    env.close()
    assert any(outcomes) and sum(outcomes) >= len(outcomes) // 2
    assert changed_and_done and max(changed_and_done) < 60


def test_redirected_episodes_are_kept_and_only_unnamed_tasks_are_redirected() -> None:
    named = next(t for t in SPLITS["pretrain_habit"] if t.verb == "lift")
    unnamed = next(t for t in UNNAMED_TASKS if t.verb == "push" and t.obj == "blue")

    def redirected(episodes: int, **options) -> DemoSet:
        return generate_demos(
            [named, unnamed],
            episodes=episodes,
            seed=0,
            progress=False,
            embed_fn=fake_embedding,
            redirect_fraction=1.0,
            **options,
        )

    demos = redirected(4)
    assert demos.meta["redirected_episodes_kept"] == 2  # the two push episodes, success or not
    assert demos.meta["redirected_episodes_changed"] <= 2
    assert len(set(demos.episode_index.tolist())) >= 3
    places_only = redirected(2, redirect_verbs=("place",))
    assert places_only.meta["redirected_episodes_kept"] == 0
    with pytest.raises(ValueError, match="redirect_fraction"):
        generate_demos([unnamed], episodes=1, redirect_fraction=1.5, embed_fn=fake_embedding)
    with pytest.raises(ValueError, match="redirect_verbs"):
        generate_demos([unnamed], episodes=1, redirect_verbs=("lift",), embed_fn=fake_embedding)


def test_homing_sends_every_unredirected_place_and_push_home() -> None:
    homing, habit = SPLITS["pretrain_homing"], SPLITS["pretrain_habit"]
    home = dict(HOME_PAIRS)
    unnamed = [t for t in homing if t.verb != "lift"]
    assert unnamed and all(not t.names_target and t.target == home[t.obj] for t in unnamed)
    assert {(t.verb, t.obj) for t in unnamed} == {
        (v, c) for v in ("place", "push") for c in OBJECT_NAMES
    }
    assert sum(t.verb == "lift" for t in homing) * 5 == len(homing)
    assert set(homing) <= set(habit)  # the habit's texts and tasks, less the minority mats
    assert set(_texts("pretrain_homing")) == set(_texts("pretrain_habit"))
    # its own tasks are habit_own's: every distinct task of the split, any mat succeeding
    assert {t.name for t in SPLITS["habit_home"]} == {t.name for t in homing}


def test_redirect_profile_changes_only_the_redirect_share() -> None:
    from frs_sim.studies.generalist import PROFILES

    habit, redirect = PROFILES["robust_habit"], PROFILES["robust_habit_redirect"]
    assert dataclasses.replace(redirect, redirect_fraction=0.0) == habit
    assert redirect.demo_options()["redirect-fraction"] == 0.5
    push_only = PROFILES["robust_habit_redirect_push"]
    assert push_only.demo_options()["redirect-verbs"] == "push"
    assert len({habit.demo_key(), redirect.demo_key(), push_only.demo_key()}) == 3
    redirect.check_seeds()
    homing = PROFILES["robust_homing_redirect"]
    assert dataclasses.replace(homing, split="pretrain_habit") == redirect
    assert homing.demo_key() != redirect.demo_key()
    homing.check_seeds()
    ends = PROFILES["robust_habit_redirect_push_ends"]
    assert dataclasses.replace(ends, redirect_ends_at_new_mat=False) == push_only
    assert ends.demo_options()["redirect-ends-at-new-mat"] is True
    transit = PROFILES["robust_homing_transit"]
    assert transit.demo_options()["redirect-in-transit"] is True
    assert dataclasses.replace(transit, redirect_in_transit=False) == homing
    assert transit.demo_key() != homing.demo_key()
    motion, beta = (PROFILES[f"robust_homing_transit_motion{s}"] for s in ("", "_beta"))
    assert dataclasses.replace(beta, time_sampling="uniform") == motion
    assert beta.demo_key() == motion.demo_key()  # trained on the same cached demonstrations


@pytest.mark.parametrize("verb", ["place", "push"])
def test_an_any_mat_task_succeeds_on_whichever_mat_the_cube_ends_on(verb: str) -> None:
    """ "Put the green cube on a mat" names no mat: the expert heading for another mat than the
    task's succeeds under ``any_mat`` (the same episode fails the drawn-mat check above), and
    a cube left off every mat does not."""
    task = next(t for t in UNNAMED_TASKS if t.verb == verb and t.obj == "green")
    anywhere = dataclasses.replace(task, any_mat=True)
    env = FrankaTabletopEnv(tasks=[anywhere], embed_fn=fake_embedding)
    rng = np.random.default_rng(3)
    redirect = dataclasses.replace(draw_redirect(task, rng), step=0)
    rollout = expert_rollout(env, ScriptedExpert(), anywhere, 2100, rng, redirect=redirect)
    cube = env.object_positions()[task.obj][:2]
    mats = env.target_positions()
    assert rollout.success and env.is_success()
    assert np.all(np.abs(cube - mats[redirect.task.target][:2]) <= MAT_SUCCESS_HALF)
    assert not np.all(np.abs(cube - mats[task.target][:2]) <= MAT_SUCCESS_HALF)
    env.reset(seed=2100, options={"task": anywhere})
    assert not env.is_success()  # the cube starts off every mat
    env.close()
