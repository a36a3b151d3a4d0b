"""The instruction-projection probe: folds that hide words, and the nearest-task reading."""

from __future__ import annotations

import pytest
import torch

from frs_sim.studies.instruction_probe import (
    content_words,
    main,
    nearest_task_accuracy,
    unseen_word_folds,
    verb_and_cube,
)


def test_content_words_leave_out_colours_and_articles() -> None:
    assert content_words("Put the red cube on a Mat") == {"put", "cube", "on", "mat"}
    assert verb_and_cube("place_red_anymat") == "place_red" and verb_and_cube("lift_blue") == (
        "lift_blue"
    )


def test_each_fold_fits_only_on_texts_without_its_held_out_words() -> None:
    texts = [f"{verb} the red {noun}" for verb in ("lift", "raise", "grab") for noun in "ab"]
    texts += ["push the blue cube", "slide the blue block", "shove the blue box"]
    for fit, read in unseen_word_folds(texts, folds=5, seed=3):
        assert fit and read and not set(fit) & set(read)
        assert sorted(fit + read) == list(range(len(texts)))
        fit_words = frozenset().union(*(content_words(texts[i]) for i in fit))
        for i in read:  # every read text carries a word the fit never saw
            assert content_words(texts[i]) - fit_words


def test_gentle_shrinkage_reads_texts_moved_along_an_axis_training_never_used() -> None:
    g = torch.Generator().manual_seed(0)
    labels = [name for name in ("lift", "place", "push") for _ in range(30)]
    centres = {"lift": [-1.0, 0.0], "place": [1.0, 0.0], "push": [0.0, 1.0]}
    spread = torch.tensor([0.3, 0.3, 1.0, 1.0, 1e-3], dtype=torch.float64)
    means = torch.tensor([centres[name] + [0.0, 0.0, 0.0] for name in labels], dtype=torch.float64)
    fit = means + torch.randn(90, 5, generator=g, dtype=torch.float64) * spread
    moved = fit + torch.tensor([0.0, 0.0, 0.0, 0.0, 0.05], dtype=torch.float64)  # a new word
    gentle = nearest_task_accuracy(fit, labels, moved, labels, shrinkage=1.0)
    hard = nearest_task_accuracy(fit, labels, moved, labels, shrinkage=0.0)
    assert gentle > 0.9 > 0.6 > hard
    assert nearest_task_accuracy(fit, labels, fit, labels, shrinkage=0.0) > 0.9


def test_the_probe_refuses_to_run_without_the_cached_demonstrations(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the cache is looked up under build/ of the working directory
    with pytest.raises(SystemExit) as exit_info:
        main(["--no-splits"])
    assert exit_info.value.code == 2
