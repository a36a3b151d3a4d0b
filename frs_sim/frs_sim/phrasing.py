"""Combinable instruction vocabularies: a training vocabulary and a held-out one, never mixed.

The documented templates (``tasks.TEMPLATES``) give eight phrasings per verb; a VLM's instructions
are free-form. This module builds many more phrasings per verb from combinable slots (verb
phrase, cube noun, preposition, mat noun, trailing clause) and splits every slot's candidate
phrases into two disjoint vocabularies *deterministically*, before any result is looked at:

* a phrase that shares a word with the documented held-out templates (ids 6-7) that the training
  templates lack is never a training phrase (so those splits stay unseen in training);
* else a phrase that shares a word with the training templates (ids 0-5) is a training phrase;
* every other phrase goes by the SHA-1 of its text: the ``HELDOUT_SHARE`` of them with the
  smallest hash are held out;
* finally a held-out phrase that shares any content word with a training phrase (or a training
  template) is dropped, so no held-out content word ever occurs in training text.

Colour words and ``SHARED_WORDS`` (articles, "it") appear on both sides: the colours name the
task and must be known. Phrasing ``i`` of a verb is the ``i``-th combination of its slots in a
fixed mixed-radix order, so an id always means the same text.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache

VOCABULARIES: tuple[str, ...] = ("train", "heldout")
HELDOUT_SHARE = 1.0 / 3.0
SHARED_WORDS: frozenset[str] = frozenset({"the", "a", "it", "and"})
COLOUR_WORDS: frozenset[str] = frozenset({"red", "green", "blue", "yellow", "purple", "white"})

#: Candidate phrases per slot, before the split. ``{verb}`` slots are per task verb.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "lift_verb": (
        "pick up",
        "lift",
        "raise",
        "grab",
        "hoist",
        "elevate",
        "heave up",
        "pluck up",
        "snatch up",
        "take hold of",
        "scoop up",
        "collect",
        "fetch",
        "seize",
        "clutch",
        "retrieve",
        "hold aloft",
    ),
    "lift_tail": (
        "",
        " off the table",
        " into the air",
        " up high",
        " above the surface",
        " skyward",
        " overhead",
        " clear of the tabletop",
        " toward the ceiling",
        " and keep hold",
    ),
    "place_verb": (
        "put",
        "place",
        "set",
        "move",
        "drop",
        "deposit",
        "position",
        "lay",
        "deliver",
        "bring",
        "relocate",
        "rest",
        "plant",
        "station",
        "lower",
        "shift",
        "stow",
    ),
    "place_prep": (
        "on",
        "onto",
        "on top of",
        "upon",
        "atop",
        "over onto",
        "down on",
        "down upon",
    ),
    "push_verb": (
        "push",
        "slide",
        "nudge",
        "shove",
        "scoot",
        "glide",
        "sweep",
        "drag",
        "propel",
        "bump",
        "scrape",
        "drive",
        "budge",
        "poke",
        "skid",
        "ease",
    ),
    "push_prep": (
        "onto",
        "to",
        "toward",
        "into",
        "over to",
        "up onto",
        "as far as",
        "until it reaches",
        "along to",
        "across to",
    ),
    "push_tail": (
        "",
        " without lifting it",
        " along the table",
        " keeping it down",
        " flat on the surface",
        " never raising it",
        " while it stays grounded",
    ),
    "object_noun": (
        "cube",
        "block",
        "box",
        "brick",
        "cuboid",
        "piece",
        "object",
        "item",
        "die",
        "thing",
        "chunk",
        "square block",
    ),
    "target_noun": (
        "mat",
        "pad",
        "square",
        "target",
        "tile",
        "patch",
        "zone",
        "area",
        "spot",
        "region",
        "marker",
        "coaster",
        "sheet",
        "rug",
        "plate",
    ),
}

#: Grammar per verb: slot names in order (object colour / mat colour are filled in between).
SLOTS: dict[str, tuple[str, ...]] = {
    "lift": ("lift_verb", "object_noun", "lift_tail"),
    "place": ("place_verb", "object_noun", "place_prep", "target_noun"),
    "push": ("push_verb", "object_noun", "push_prep", "target_noun", "push_tail"),
}


def words(text: str) -> set[str]:
    """Lower-case word set of a text (format placeholders such as ``{obj}`` removed)."""
    return set(re.findall(r"[a-z]+", re.sub(r"\{[a-z_]+\}", " ", text.lower())))


def content_words(text: str) -> set[str]:
    """Words of ``text`` that carry phrasing (neither colours nor ``SHARED_WORDS``)."""
    return words(text) - SHARED_WORDS - COLOUR_WORDS


def _template_words(template_ids: tuple[int, ...]) -> set[str]:
    from frs_sim.tasks import TEMPLATES

    return {
        w
        for verb_templates in TEMPLATES.values()
        for i in template_ids
        for w in content_words(verb_templates[i])
    }


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")


@cache
def vocabulary_split() -> dict[str, dict[str, tuple[str, ...]]]:
    """``{"train": {slot: phrases}, "heldout": {slot: phrases}}`` (see the module docstring)."""
    from frs_sim.tasks import HELD_OUT_TEMPLATE_IDS, PRETRAIN_TEMPLATE_IDS

    trained = _template_words(PRETRAIN_TEMPLATE_IDS)
    documented_heldout = _template_words(HELD_OUT_TEMPLATE_IDS) - trained
    train: dict[str, list[str]] = {}
    heldout: dict[str, list[str]] = {}
    for slot, candidates in CANDIDATES.items():
        forced_held = [p for p in candidates if content_words(p) & documented_heldout]
        forced_train = [
            p for p in candidates if p not in forced_held and content_words(p) & trained
        ]
        free = sorted(
            (p for p in candidates if p not in forced_train and p not in forced_held), key=_hash
        )
        n_held = round(HELDOUT_SHARE * len(candidates)) - len(forced_held)
        n_held = min(max(n_held, 0), max(len(free) - (0 if forced_train else 1), 0))
        heldout[slot] = forced_held + free[:n_held]
        train[slot] = [p for p in candidates if p not in heldout[slot]]
    train_words = trained | {w for phrases in train.values() for p in phrases for w in words(p)}
    for slot, phrases in heldout.items():
        heldout[slot] = [p for p in phrases if not content_words(p) & train_words]
    return {
        "train": {s: tuple(p) for s, p in train.items()},
        "heldout": {s: tuple(p) for s, p in heldout.items()},
    }


def _check_vocabulary(vocabulary: str) -> dict[str, tuple[str, ...]]:
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"unknown vocabulary {vocabulary!r}; expected one of {VOCABULARIES}")
    return vocabulary_split()[vocabulary]


def phrasing_count(verb: str, vocabulary: str) -> int:
    """How many distinct phrasings ``verb`` has in ``vocabulary``."""
    pools = _check_vocabulary(vocabulary)
    if verb not in SLOTS:
        raise ValueError(f"unknown verb {verb!r}; expected one of {tuple(SLOTS)}")
    count = 1
    for slot in SLOTS[verb]:
        count *= len(pools[slot])
    return count


def phrase(
    verb: str, obj: str, target: str | None, index: int, vocabulary: str, unnamed: str = "any"
) -> str:
    """Phrasing ``index`` (0 <= index < ``phrasing_count``) of a task in ``vocabulary``.

    ``target`` None for ``place`` / ``push``: the mat is left unnamed, ``unnamed`` stands for
    "the {target}" ("... onto any pad", or with ``unnamed="the nearest"`` "... the nearest pad").
    """
    pools = _check_vocabulary(vocabulary)
    total = phrasing_count(verb, vocabulary)
    if not 0 <= index < total:
        raise ValueError(f"phrasing {index} out of range 0..{total - 1} for {verb}/{vocabulary}")
    parts: dict[str, str] = {}
    rest = index
    for slot in reversed(SLOTS[verb]):  # mixed radix, last slot fastest
        rest, digit = divmod(rest, len(pools[slot]))
        parts[slot] = pools[slot][digit]
    noun = parts["object_noun"]
    if verb == "lift":
        return f"{parts['lift_verb']} the {obj} {noun}{parts['lift_tail']}"
    mat = parts["target_noun"]
    mat = f"{unnamed} {mat}" if target is None else f"the {target} {mat}"
    if verb == "place":
        return f"{parts['place_verb']} the {obj} {noun} {parts['place_prep']} {mat}"
    return f"{parts['push_verb']} the {obj} {noun} {parts['push_prep']} {mat}{parts['push_tail']}"


def all_phrasings(verb: str, vocabulary: str) -> list[str]:
    """Every phrasing of ``verb`` as a template with ``{obj}``/``{target}`` left in."""
    return [
        phrase(verb, "{obj}", "{target}", i, vocabulary)
        for i in range(phrasing_count(verb, vocabulary))
    ]
