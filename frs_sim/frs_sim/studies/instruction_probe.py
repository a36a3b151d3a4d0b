"""How well does the instruction projection read phrasings it never saw, per shrinkage?

``python -m frs_sim.studies.instruction_probe`` loads a recipe's cached demonstrations (train
the generalist once to make them), fits the instruction projection
(:func:`~frs_steering.model.fit_discriminant_projection`) at each ``--shrinkages`` value and
reads each text as the training task whose projected centroid is nearest (verb and cube):

* **unseen words, training texts only** (the choice a recipe may make): each fold holds out a
  third of the training texts' content words, fits on the texts without any of them and reads
  the texts with one; no held-out phrasing is looked at;
* **the evaluation splits** (a diagnostic, not for choosing): the own tasks' templates, the
  held-out templates, the novel split and the held-out vocabulary, embedded by MiniLM.

Nearest-centroid reading is a probe of the projection, not of a policy: the closed-loop figures
are in docs/benchmarks.md ("The instruction projection's shrinkage").
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence

import numpy as np
import torch

from frs_sim.demonstrations import DemoSet
from frs_sim.evaluate.workers import embed_texts_subprocess
from frs_sim.phrasing import COLOUR_WORDS, SHARED_WORDS
from frs_sim.studies.generalist import DEFAULT_CACHE, PROFILES, instruction_classes
from frs_sim.tasks import get_split
from frs_steering.model import fit_discriminant_projection

DIAGNOSTIC_SPLITS = ("habit_own", "habit_own_paraphrase", "novel", "novel_vocab")


def content_words(text: str) -> frozenset[str]:
    """The words of ``text`` that may differ between phrasings of one task (not colours or
    articles, which every phrasing shares)."""
    return frozenset(re.findall(r"[a-z]+", text.lower())) - SHARED_WORDS - COLOUR_WORDS


def nearest_task_accuracy(
    fit: torch.Tensor,
    fit_labels: Sequence[str],
    read: torch.Tensor,
    read_labels: Sequence[str],
    shrinkage: float,
) -> float:
    """Share of ``read`` rows whose nearest projected class centroid (projection fitted on
    ``fit``, both standardized by ``fit``'s statistics) is their own label."""
    shift, scale = fit.mean(0), fit.std(0).clamp_min(1e-2)
    projection = fit_discriminant_projection((fit - shift) / scale, fit_labels, shrinkage)
    classes = sorted(set(fit_labels))
    projected = ((fit - shift) / scale) @ projection
    index = torch.tensor([classes.index(label) for label in fit_labels])
    centroids = torch.stack([projected[index == k].mean(0) for k in range(len(classes))])
    nearest = torch.cdist(((read - shift) / scale) @ projection, centroids).argmin(1)
    read_right = [
        classes[k] == label for k, label in zip(nearest.tolist(), read_labels, strict=True)
    ]
    return float(np.mean(read_right))


def unseen_word_folds(
    texts: Sequence[str], folds: int, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """(fit rows, read rows) per fold: a third of the content words held out, the texts without
    any of them to fit, the texts with one to read."""
    words = [content_words(text) for text in texts]
    vocabulary = sorted(frozenset().union(*words))
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(folds):
        held = frozenset(rng.choice(vocabulary, len(vocabulary) // 3, replace=False).tolist())
        fit = [i for i, w in enumerate(words) if not w & held]
        read = [i for i, w in enumerate(words) if w & held]
        result.append((fit, read))
    return result


def verb_and_cube(task_name: str) -> str:
    """``place_red_anymat`` -> ``place_red``: what an instruction of the homing split names."""
    return "_".join(task_name.split("_")[:2])


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON line per shrinkage: the unseen-word folds' mean and the splits' reading."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="shipped")
    parser.add_argument("--shrinkages", default="0,0.1,0.2,0.3,0.5,0.7,0.8,0.9,1")
    parser.add_argument("--folds", type=int, default=8)
    parser.add_argument("--no-splits", action="store_true", help="skip the MiniLM diagnostic")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shrinkages = [float(v) for v in args.shrinkages.split(",")]
    recipe = PROFILES[args.profile]
    path = DEFAULT_CACHE / f"demos-{recipe.demo_key()}.npz"
    if not path.is_file():
        parser.error(f"{path} is missing: train the {args.profile} generalist once to make it")
    demos = DemoSet.load(path)
    texts = [str(t) for t in demos.instructions]
    labels = [verb_and_cube(c) for c in instruction_classes(demos, recipe.split)]
    embeddings = torch.from_numpy(np.asarray(demos.instruction_embeddings, dtype=np.float64))
    folds = unseen_word_folds(texts, args.folds)
    splits: dict[str, tuple[torch.Tensor, list[str]]] = {}
    if not args.no_splits:
        for split in DIAGNOSTIC_SPLITS:
            pairs = [
                (text, f"{t.verb}_{t.obj}") for t in get_split(split) for text in t.instructions()
            ]
            table = embed_texts_subprocess([text for text, _ in pairs])
            rows = np.stack([table[text] for text, _ in pairs]).astype(np.float64)
            splits[split] = (torch.from_numpy(rows), [label for _, label in pairs])
    for shrinkage in shrinkages:
        unseen = [
            nearest_task_accuracy(
                embeddings[fit],
                [labels[i] for i in fit],
                embeddings[read],
                [labels[i] for i in read],
                shrinkage,
            )
            for fit, read in folds
        ]
        line = {"shrinkage": shrinkage, "unseen_words": round(float(np.mean(unseen)), 3)}
        for split, (rows, split_labels) in splits.items():
            accuracy = nearest_task_accuracy(embeddings, labels, rows, split_labels, shrinkage)
            line[split] = round(accuracy, 3)
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
