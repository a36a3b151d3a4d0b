"""Task family, paraphrase templates and the pretraining / novel splits.

A task is a verb applied to one cube (and, for ``place`` and ``push``, one target mat):

* ``lift``  - grasp the cube and raise it at least 8 cm off the table, still held;
* ``place`` - carry the cube onto the mat and let go (cube resting on the mat, not held);
* ``push``  - slide the cube onto the mat without ever lifting it more than 2 cm.

Splits (``SPLITS``), built to separate LOCAL skills from the GLOBAL choice:

* ``pretrain``   - every lift task, and 6 of the 9 (cube, mat) pairs for both ``place`` and
  ``push``, phrased with templates 0-5. Every cube and every mat occurs in pretraining, and every
  skill (reach, align, grasp, carry, release, push) is demonstrated, just never for the held-out
  colour pairs.
* ``novel``      - the 3 held-out colour pairs (``NOVEL_PAIRS``: red+yellow, green+purple,
  blue+white; never seen together under any verb) for ``place`` and ``push``, phrased only with
  the held-out templates 6-7. A policy trained on ``pretrain`` knows how to grasp, carry, release
  and push, but not which cube goes to which mat here: that global choice is what a coarse
  reasoner direction supplies under steering.
* ``paraphrase`` - diagnostic: the pretraining tasks phrased with the held-out templates only
  (tests language robustness without the compositional gap).
* ``novel_vocab`` / ``paraphrase_vocab`` - the same tasks as ``novel`` / ``paraphrase`` phrased
  with the generated held-out vocabulary (``frs_sim.phrasing``): verbs, nouns and prepositions
  that no training text contains.
* ``pretrain_vocab`` - the pretraining tasks phrased with the generated *training* vocabulary
  (the extra phrasings a language-robust generalist is trained on).
* ``pretrain_home`` - exploration (issue 15, "home mats"): every lift task, and for ``place`` and
  ``push`` only the 3 ``HOME_PAIRS`` (a perfect matching disjoint from ``NOVEL_PAIRS``: each cube
  goes to exactly one mat), templates 0-5. The mat word then carries nothing the policy needs, so
  it can learn "red goes to its home mat" instead of reading the mat; the novel split is unchanged.
  The 3 pairs in neither set are used by no split. ``pretrain_home_vocab`` is its
  training-vocabulary twin.
* ``pretrain_anymat`` - exploration (issue 15, "any mat"): ``pretrain_home`` plus mat-UNNAMED
  ``place`` and ``push`` tasks for every cube ("put the red cube on any mat",
  ``UNNAMED_TEMPLATES``; ``TaskSpec.names_target`` False). An unnamed task still has a concrete
  mat for the expert and the success check; the split holds one per (verb, cube, mat) with the
  same instruction texts, so the mat of an unnamed episode is drawn with the task (uniformly from
  the episode seed when the environment draws the task; a third each when demonstrations visit
  the split round-robin). Release and push-on are then shown over every mat as a local skill
  while no NAMED instruction pairs a cube with a non-home mat. ``pretrain_anymat_vocab`` is its
  training-vocabulary twin (unnamed phrasings: "... onto any <mat noun>").
* ``pretrain_nearest`` - follow-up of ``pretrain_anymat``: the same split, but the unnamed
  instruction says "the nearest mat" (``NEAREST_TEMPLATES``; ``TaskSpec.nearest_mat``) and the
  environment lays the mats out so that the task's mat IS the one nearest the cube (it swaps two
  mat positions after sampling), so an unnamed instruction has one right answer per scene instead
  of three. ``pretrain_nearest_vocab`` is its training-vocabulary twin.
* ``pretrain_habit`` - exploration (issue 15, "habit"): lifts, and mat-unnamed ``place`` /
  ``push`` only; the expert takes each cube to its home mat in ``HABIT_HOME_WEIGHT`` of 6
  episodes and to each other mat otherwise. No training text names a mat, so the novel pairs are
  minority modes of the policy's prior, not instructions it can read. ``habit_own`` evaluates it
  on its own tasks as they are phrased: lifts, and "put the red cube on a mat" succeeds on ANY
  mat (``TaskSpec.any_mat``); ``habit_own_paraphrase`` the same with the held-out templates.
  ``habit_home`` / ``habit_home_paraphrase`` count only the home mat (the prior's majority mode).
* ``pretrain_homing`` - follow-up of ``pretrain_habit``: the same lifts and unnamed tasks, but
  every place / push goes to the home mat; with redirected episodes
  (``frs_sim.demonstrations.draw_redirect``) the other mats appear only after a change of mind,
  so the unsteered prior has one destination per cube. Evaluated with ``habit_own``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from frs_sim.phrasing import phrase, phrasing_count
from frs_sim.scene import OBJECT_NAMES, TARGET_NAMES

VERBS: tuple[str, ...] = ("lift", "place", "push")

#: Paraphrase templates per verb. ``{obj}``/``{target}`` are colour words. Ids 0-5 are used in
#: pretraining, ids 6-7 are held out (``HELD_OUT_TEMPLATE_IDS``).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "lift": (
        "pick up the {obj} cube",
        "lift the {obj} block",
        "grasp the {obj} cube and raise it",
        "pick the {obj} block up off the table",
        "raise the {obj} cube into the air",
        "grab the {obj} block and lift it up",
        "take the {obj} cube and hold it up high",
        "get the {obj} block off the table and keep it in the gripper",
    ),
    "place": (
        "put the {obj} cube on the {target} mat",
        "place the {obj} block onto the {target} mat",
        "pick up the {obj} cube and set it down on the {target} pad",
        "move the {obj} cube onto the {target} square",
        "grab the {obj} block and drop it on the {target} target",
        "lift the {obj} cube and put it on the {target} mat",
        "transfer the {obj} cube to the {target} pad",
        "carry the {obj} block over to the {target} square and release it there",
    ),
    "push": (
        "push the {obj} cube onto the {target} mat",
        "slide the {obj} block over to the {target} mat",
        "nudge the {obj} cube into the {target} square",
        "shove the {obj} block toward the {target} pad until it is on it",
        "without lifting it, move the {obj} cube to the {target} mat",
        "push the {obj} block along the table to the {target} target",
        "slide the {obj} cube across the table onto the {target} pad",
        "keep the {obj} block on the table and push it to the {target} square",
    ),
}
#: Mat-unnamed phrasings of ``place`` / ``push`` (``TaskSpec.names_target`` False): the named
#: templates with "the {target} <noun>" replaced by "any <noun>", "one of the <nouns>" or
#: "a <noun>".
#: Kept out of ``TEMPLATES`` on purpose: ``frs_sim.phrasing`` splits its vocabularies by the
#: words of ``TEMPLATES``, and those must not move. Same ids: 0-5 trained, 6-7 held out.
UNNAMED_TEMPLATES: dict[str, tuple[str, ...]] = {
    "place": (
        "put the {obj} cube on a mat",
        "place the {obj} block onto any mat",
        "pick up the {obj} cube and set it down on one of the pads",
        "move the {obj} cube onto a square",
        "grab the {obj} block and drop it on any target",
        "lift the {obj} cube and put it on one of the mats",
        "transfer the {obj} cube to any pad",
        "carry the {obj} block over to a square and release it there",
    ),
    "push": (
        "push the {obj} cube onto a mat",
        "slide the {obj} block over to any mat",
        "nudge the {obj} cube into one of the squares",
        "shove the {obj} block toward a pad until it is on it",
        "without lifting it, move the {obj} cube to any mat",
        "push the {obj} block along the table to one of the targets",
        "slide the {obj} cube across the table onto a pad",
        "keep the {obj} block on the table and push it to any square",
    ),
}
#: "The nearest mat" phrasings (``TaskSpec.nearest_mat``), ids as above.
NEAREST_TEMPLATES: dict[str, tuple[str, ...]] = {
    "place": (
        "put the {obj} cube on the nearest mat",
        "place the {obj} block onto the closest mat",
        "pick up the {obj} cube and set it down on the nearest pad",
        "move the {obj} cube onto the closest square",
        "grab the {obj} block and drop it on the nearest target",
        "lift the {obj} cube and put it on the closest mat",
        "transfer the {obj} cube to the nearest pad",
        "carry the {obj} block over to the closest square and release it there",
    ),
    "push": (
        "push the {obj} cube onto the nearest mat",
        "slide the {obj} block over to the closest mat",
        "nudge the {obj} cube into the nearest square",
        "shove the {obj} block toward the closest pad until it is on it",
        "without lifting it, move the {obj} cube to the nearest mat",
        "push the {obj} block along the table to the closest target",
        "slide the {obj} cube across the table onto the nearest pad",
        "keep the {obj} block on the table and push it to the closest square",
    ),
}
PRETRAIN_TEMPLATE_IDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
HELD_OUT_TEMPLATE_IDS: tuple[int, ...] = (6, 7)

#: (cube, mat) colour pairs never shown together in pretraining, under any verb.
NOVEL_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "yellow"), ("green", "purple"), ("blue", "white")}
)


#: Exploration ("home mats"): the only (cube, mat) pairs of ``pretrain_home``, one mat per cube.
HOME_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "purple"), ("green", "white"), ("blue", "yellow")}
)


@dataclass(frozen=True)
class TaskSpec:
    """One task of the family: verb, cube, optional mat and the phrasings it may be given with.

    ``vocabulary`` ``"templates"`` (default): ``template_ids`` index ``TEMPLATES[verb]``;
    ``"train"`` / ``"heldout"``: they index the generated phrasings of ``frs_sim.phrasing``.
    ``names_target`` False (``place`` / ``push`` only): the instruction names no mat
    (``UNNAMED_TEMPLATES``, or the generated "any <mat noun>" phrasings); ``target`` is still the
    mat the expert goes to and the success check tests. ``nearest_mat`` (unnamed tasks only): the
    instruction says "the nearest mat" (``NEAREST_TEMPLATES``) and the environment makes ``target``
    the mat nearest the cube. ``any_mat`` (unnamed, not nearest): success on whichever mat the cube
    ends on, as the instruction asks; ``target`` is then only where the expert and the scripted
    reasoner go.
    """

    verb: str
    obj: str
    target: str | None
    template_ids: tuple[int, ...]
    vocabulary: str = "templates"
    names_target: bool = True
    nearest_mat: bool = False
    any_mat: bool = False

    def __post_init__(self) -> None:
        if self.verb not in VERBS:
            raise ValueError(f"unknown verb {self.verb!r}; expected one of {VERBS}")
        if self.obj not in OBJECT_NAMES:
            raise ValueError(f"unknown object {self.obj!r}; expected one of {OBJECT_NAMES}")
        needs_target = self.verb != "lift"
        if needs_target and self.target not in TARGET_NAMES:
            raise ValueError(f"{self.verb} needs a target in {TARGET_NAMES}, got {self.target!r}")
        if not needs_target and self.target is not None:
            raise ValueError("lift takes no target")
        if not needs_target and not self.names_target:
            raise ValueError("only place / push tasks can leave their mat unnamed")
        if self.nearest_mat and self.names_target:
            raise ValueError("nearest_mat needs names_target=False")
        if self.any_mat and (self.names_target or self.nearest_mat):
            raise ValueError("any_mat needs names_target=False and nearest_mat=False")
        n_templates = self.phrasing_count()
        if not self.template_ids or any(not 0 <= t < n_templates for t in self.template_ids):
            raise ValueError(f"template ids {self.template_ids} out of range 0..{n_templates - 1}")

    def phrasing_count(self) -> int:
        """How many phrasings this task's vocabulary has for its verb."""
        if self.vocabulary == "templates":
            return len(self._templates())
        return phrasing_count(self.verb, self.vocabulary)

    def _templates(self) -> tuple[str, ...]:
        if self.names_target:
            return TEMPLATES[self.verb]
        return (NEAREST_TEMPLATES if self.nearest_mat else UNNAMED_TEMPLATES)[self.verb]

    def with_vocabulary(self, vocabulary: str) -> TaskSpec:
        """The same task phrased with every phrasing of another vocabulary."""
        twin = dataclasses.replace(self, template_ids=(0,), vocabulary=vocabulary)
        return dataclasses.replace(twin, template_ids=tuple(range(twin.phrasing_count())))

    @property
    def name(self) -> str:
        """Stable identifier such as ``place_red_yellow``, ``lift_blue`` or, for a mat-unnamed
        task whose episode goes to the yellow mat, ``place_red_anymat_yellow``
        (``place_red_onanymat`` when any mat succeeds)."""
        if self.any_mat:
            return f"{self.verb}_{self.obj}_onanymat"
        middle = None if self.names_target else "nearestmat" if self.nearest_mat else "anymat"
        return "_".join(p for p in (self.verb, self.obj, middle, self.target) if p)

    @property
    def named_task(self) -> str:
        """The task as its instruction can tell it: ``name`` less a mat the text does not name
        (``place_red_anymat_yellow`` and ``place_red_onanymat`` -> ``place_red``)."""
        return self.name if self.names_target else f"{self.verb}_{self.obj}"

    @property
    def object_index(self) -> int:
        """Index of the cube in ``OBJECT_NAMES`` (and in the state vector)."""
        return OBJECT_NAMES.index(self.obj)

    @property
    def target_index(self) -> int | None:
        """Index of the mat in ``TARGET_NAMES`` (``None`` for lift)."""
        return None if self.target is None else TARGET_NAMES.index(self.target)

    def instruction(self, template_id: int) -> str:
        """The instruction text for one of this task's templates."""
        if template_id not in self.template_ids:
            raise ValueError(f"template {template_id} is not allowed for {self.name}")
        named = self.target if self.names_target else None
        if self.vocabulary != "templates":
            unnamed = "the nearest" if self.nearest_mat else "any"
            return phrase(self.verb, self.obj, named, template_id, self.vocabulary, unnamed)
        return self._templates()[template_id].format(obj=self.obj, target=self.target)

    def instructions(self) -> tuple[str, ...]:
        """Every instruction text this task may be phrased with."""
        return tuple(self.instruction(t) for t in self.template_ids)


def _tasks(novel_pairs: bool, template_ids: tuple[int, ...]) -> tuple[TaskSpec, ...]:
    tasks: list[TaskSpec] = []
    if not novel_pairs:
        tasks += [TaskSpec("lift", obj, None, template_ids) for obj in OBJECT_NAMES]
    for verb in ("place", "push"):
        for obj in OBJECT_NAMES:
            for target in TARGET_NAMES:
                if ((obj, target) in NOVEL_PAIRS) == novel_pairs:
                    tasks.append(TaskSpec(verb, obj, target, template_ids))
    return tuple(tasks)


SPLITS: dict[str, tuple[TaskSpec, ...]] = {
    "pretrain": _tasks(novel_pairs=False, template_ids=PRETRAIN_TEMPLATE_IDS),
    "novel": _tasks(novel_pairs=True, template_ids=HELD_OUT_TEMPLATE_IDS),
    "paraphrase": _tasks(novel_pairs=False, template_ids=HELD_OUT_TEMPLATE_IDS),
}
SPLITS["novel_vocab"] = tuple(t.with_vocabulary("heldout") for t in SPLITS["novel"])
SPLITS["paraphrase_vocab"] = tuple(t.with_vocabulary("heldout") for t in SPLITS["paraphrase"])
SPLITS["pretrain_vocab"] = tuple(t.with_vocabulary("train") for t in SPLITS["pretrain"])
SPLITS["pretrain_home"] = tuple(
    t for t in SPLITS["pretrain"] if t.verb == "lift" or (t.obj, t.target) in HOME_PAIRS
)
SPLITS["pretrain_home_vocab"] = tuple(t.with_vocabulary("train") for t in SPLITS["pretrain_home"])
#: The mat-unnamed tasks of ``pretrain_anymat``: every (verb, cube) x each mat an episode may go to.
UNNAMED_TASKS: tuple[TaskSpec, ...] = tuple(
    TaskSpec(verb, obj, target, PRETRAIN_TEMPLATE_IDS, names_target=False)
    for verb in ("place", "push")
    for obj in OBJECT_NAMES
    for target in TARGET_NAMES
)
SPLITS["pretrain_anymat"] = SPLITS["pretrain_home"] + UNNAMED_TASKS
SPLITS["pretrain_anymat_vocab"] = tuple(
    t.with_vocabulary("train") for t in SPLITS["pretrain_anymat"]
)
SPLITS["pretrain_nearest"] = SPLITS["pretrain_home"] + tuple(
    dataclasses.replace(t, nearest_mat=True) for t in UNNAMED_TASKS
)
SPLITS["pretrain_nearest_vocab"] = tuple(
    t.with_vocabulary("train") for t in SPLITS["pretrain_nearest"]
)
#: Exploration ("habit"): copies of the home mat per (verb, cube) among the unnamed tasks of
#: ``pretrain_habit`` (every other mat: one copy), so a cube goes home in 4 of 6 episodes.
HABIT_HOME_WEIGHT = 4


def _habit_tasks(template_ids: tuple[int, ...], other_copies: int = 1) -> tuple[TaskSpec, ...]:
    """Lift, and mat-unnamed place / push whose mat is drawn with a bias toward the home mat
    (``other_copies`` of each other mat per ``HABIT_HOME_WEIGHT`` of the home mat)."""
    home = dict(HOME_PAIRS)
    tasks: list[TaskSpec] = []
    for verb in ("place", "push"):
        for obj in OBJECT_NAMES:
            for target in TARGET_NAMES:
                copies = HABIT_HOME_WEIGHT if target == home[obj] else other_copies
                tasks += [TaskSpec(verb, obj, target, template_ids, names_target=False)] * copies
    lift_copies = len(tasks) // (4 * len(OBJECT_NAMES))  # lift: a fifth of all episodes
    lifts = [TaskSpec("lift", obj, None, template_ids) for obj in OBJECT_NAMES] * lift_copies
    return tuple(lifts + tasks)


def _home_only(tasks: tuple[TaskSpec, ...]) -> tuple[TaskSpec, ...]:
    """Each distinct task once, keeping lifts and the unnamed tasks whose mat is the home mat."""
    home = dict(HOME_PAIRS)
    unique = dict.fromkeys(tasks)
    return tuple(t for t in unique if t.verb == "lift" or home[t.obj] == t.target)


#: Exploration ("weighted pairs"): copies of each home pair per copy of the other seen pairs in
#: ``pretrain_weighted`` (named, like ``pretrain``), and copies of each lift.
WEIGHTED_HOME_COPIES = 3
WEIGHTED_LIFT_COPIES = 2


def _weighted_tasks() -> tuple[TaskSpec, ...]:
    """``pretrain`` with each cube's home pair repeated: every seen pair is named and shown, but
    the mat word usually repeats what the cube already says."""
    tasks: list[TaskSpec] = []
    for task in SPLITS["pretrain"]:
        if task.verb == "lift":
            copies = WEIGHTED_LIFT_COPIES
        else:
            copies = WEIGHTED_HOME_COPIES if (task.obj, task.target) in HOME_PAIRS else 1
        tasks += [task] * copies
    return tuple(tasks)


SPLITS["pretrain_weighted"] = _weighted_tasks()
SPLITS["pretrain_weighted_vocab"] = tuple(
    t.with_vocabulary("train") for t in SPLITS["pretrain_weighted"]
)
SPLITS["pretrain_habit"] = _habit_tasks(PRETRAIN_TEMPLATE_IDS)
SPLITS["pretrain_habit_vocab"] = tuple(t.with_vocabulary("train") for t in SPLITS["pretrain_habit"])
SPLITS["pretrain_homing"] = _habit_tasks(PRETRAIN_TEMPLATE_IDS, other_copies=0)
SPLITS["habit_home"] = _home_only(SPLITS["pretrain_habit"])
SPLITS["habit_home_paraphrase"] = _home_only(_habit_tasks(HELD_OUT_TEMPLATE_IDS))


def _any_mat(tasks: tuple[TaskSpec, ...]) -> tuple[TaskSpec, ...]:
    """The tasks with every unnamed place / push succeeding on any mat."""
    return tuple(t if t.names_target else dataclasses.replace(t, any_mat=True) for t in tasks)


SPLITS["habit_own"] = _any_mat(SPLITS["habit_home"])
SPLITS["habit_own_paraphrase"] = _any_mat(SPLITS["habit_home_paraphrase"])
#: The split that evaluates a training split's own tasks, where it is not the training split
#: itself: a habit or homing policy's unnamed place / push count on any mat.
OWN_TASKS_SPLITS: dict[str, str] = {"pretrain_habit": "habit_own", "pretrain_homing": "habit_own"}


def own_tasks_split(training_split: str) -> str:
    """The split on which a policy trained on ``training_split`` meets its own tasks."""
    get_split(training_split)  # unknown names are refused, not passed on
    return OWN_TASKS_SPLITS.get(training_split, training_split)


#: Splits whose phrasings or colour pairs no training recipe may use.
HELD_OUT_SPLITS: tuple[str, ...] = (
    "novel",
    "paraphrase",
    "novel_vocab",
    "paraphrase_vocab",
    "habit_home_paraphrase",
    "habit_own_paraphrase",
)


def all_tasks() -> tuple[TaskSpec, ...]:
    """Every (verb, cube, mat) task once, with all templates (for experts and tests)."""
    every_template = {verb: tuple(range(len(t))) for verb, t in TEMPLATES.items()}
    tasks = [TaskSpec("lift", obj, None, every_template["lift"]) for obj in OBJECT_NAMES]
    tasks += [
        TaskSpec(verb, obj, target, every_template[verb])
        for verb in ("place", "push")
        for obj in OBJECT_NAMES
        for target in TARGET_NAMES
    ]
    return tuple(tasks)


def get_split(name: str) -> tuple[TaskSpec, ...]:
    """Tasks of a named split (``pretrain``, ``novel``, ``paraphrase``, or ``all``)."""
    if name == "all":
        return all_tasks()
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {(*SPLITS, 'all')}")
    return SPLITS[name]


def find_task(name: str, split: str = "all") -> TaskSpec:
    """Look a task up by ``TaskSpec.name`` within a split."""
    for task in get_split(split):
        if task.name == name:
            return task
    raise ValueError(f"no task named {name!r} in split {split!r}")
