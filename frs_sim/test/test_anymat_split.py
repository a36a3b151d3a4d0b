"""Issue 15 exploration "any mat": home pairs named, place / push onto an unnamed mat."""

from __future__ import annotations

import numpy as np
import pytest
from test_generalist import fake_embedding  # the one MiniLM stand-in of these tests

from frs_sim.env import FrankaTabletopEnv
from frs_sim.experts import ScriptedExpert, run_expert_episode
from frs_sim.phrasing import COLOUR_WORDS, SLOTS, all_phrasings, content_words, words
from frs_sim.scene import OBJECT_NAMES, TARGET_NAMES
from frs_sim.tasks import (
    HELD_OUT_SPLITS,
    HELD_OUT_TEMPLATE_IDS,
    HOME_PAIRS,
    NOVEL_PAIRS,
    PRETRAIN_TEMPLATE_IDS,
    SPLITS,
    TEMPLATES,
    UNNAMED_TASKS,
    UNNAMED_TEMPLATES,
    TaskSpec,
)

ANYMAT = ("pretrain_anymat", "pretrain_anymat_vocab")
EXPERT_SEEDS_PER_TASK = 10


def _texts(split: str) -> set[str]:
    return {text for task in SPLITS[split] for text in task.instructions()}


def _sampled_instructions(task: TaskSpec) -> tuple[str, ...]:
    """Every template, or every 7th generated phrasing (push has 35200: all of them take ~1 min)."""
    ids = task.template_ids if task.vocabulary == "templates" else task.template_ids[::7]
    return tuple(task.instruction(i) for i in ids)


def test_named_tasks_are_exactly_pretrain_home_and_unnamed_cover_every_cube_verb_mat() -> None:
    anymat = SPLITS["pretrain_anymat"]
    named = [t for t in anymat if t.names_target]
    assert [t.name for t in named] == [t.name for t in SPLITS["pretrain_home"]]
    assert {(t.obj, t.target) for t in named if t.target} == set(HOME_PAIRS)
    unnamed = [t for t in anymat if not t.names_target]
    assert unnamed == list(UNNAMED_TASKS)
    assert sorted((t.verb, t.obj, t.target) for t in unnamed) == sorted(
        (v, c, m) for v in ("place", "push") for c in OBJECT_NAMES for m in TARGET_NAMES
    )
    assert all(t.template_ids == PRETRAIN_TEMPLATE_IDS for t in anymat)
    assert len({t.name for t in anymat}) == len(anymat) == 9 + 18
    vocab = SPLITS["pretrain_anymat_vocab"]
    assert [t.name for t in vocab] == [t.name for t in anymat]
    assert {t.vocabulary for t in vocab} == {"train"}
    assert not set(ANYMAT) & set(HELD_OUT_SPLITS)


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


def test_unnamed_phrasings_keep_held_out_words_out_of_training() -> None:
    unnamed_train = [
        UNNAMED_TEMPLATES[v][i] for v in UNNAMED_TEMPLATES for i in PRETRAIN_TEMPLATE_IDS
    ]
    unnamed_train += [p for v in ("place", "push") for p in all_phrasings(v, "train")]
    train_words = {w for t in unnamed_train for w in content_words(t)}
    heldout_words = {
        w for verb in SLOTS for p in all_phrasings(verb, "heldout") for w in content_words(p)
    }
    assert not train_words & heldout_words
    named_train = {
        w for v in TEMPLATES for i in PRETRAIN_TEMPLATE_IDS for w in content_words(TEMPLATES[v][i])
    }
    documented_heldout_only = {
        w for v in TEMPLATES for i in HELD_OUT_TEMPLATE_IDS for w in content_words(TEMPLATES[v][i])
    } - named_train
    template_words = {w for t in unnamed_train[:12] for w in content_words(t)}
    assert not template_words & documented_heldout_only
    # the only new training words say "some mat": no colour, no held-out phrasing
    assert template_words - named_train <= {
        "any",
        "one",
        "of",
        "mats",
        "pads",
        "squares",
        "targets",
    }
    assert not template_words & COLOUR_WORDS
    held_texts = {
        UNNAMED_TEMPLATES[v][i].format(obj="red")
        for v in UNNAMED_TEMPLATES
        for i in HELD_OUT_TEMPLATE_IDS
    }
    assert not held_texts & _texts("pretrain_anymat")


def test_unnamed_spec_validation_and_names() -> None:
    task = TaskSpec("push", "red", "yellow", (0, 6), names_target=False)
    assert task.name == "push_red_anymat_yellow"
    assert task.instruction(6) == "slide the red cube across the table onto a pad"
    assert "yellow" not in task.with_vocabulary("heldout").instruction(3)
    with pytest.raises(ValueError):
        TaskSpec("lift", "red", None, (0,), names_target=False)
    with pytest.raises(ValueError):
        TaskSpec("place", "red", None, (0,), names_target=False)  # the expert still needs a mat


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


def test_expert_solves_every_unnamed_task() -> None:
    """The same expert chunks as the named task to that mat: >= 90 % over 10 seeds per task."""
    env = FrankaTabletopEnv(tasks=list(UNNAMED_TASKS), embed_fn=fake_embedding)
    expert = ScriptedExpert()
    failures = []
    for task in UNNAMED_TASKS:
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

    recipe = PROFILES["robust_anymat"]
    assert recipe.split == "pretrain_anymat"
    recipe.check_seeds()
    keys = {PROFILES[p].demo_key() for p in ("robust", "robust_home", "robust_anymat")}
    assert len(keys) == 3
