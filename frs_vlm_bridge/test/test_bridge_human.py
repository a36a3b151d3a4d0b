"""Human reasoner: typed commands, clicked targets, and expiry of stale input."""

import numpy as np
import pytest

from frs_steering.reasoning import (
    MAGNITUDE_LESS,
    MAGNITUDE_MORE,
    Gripper,
    Observation,
    Reasoner,
    Source,
    TargetApproach,
)
from frs_vlm_bridge.human import HumanConfig, HumanReasoner, parse_command
from frs_vlm_bridge.vlm import VlmConfig, VlmReasoner

S = 1 / np.sqrt(2)
OBS = Observation("put the cube in the bowl", ee_position=[0.4, 0.0, 0.3])


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("forward", [1, 0, 0]),
        ("back", [-1, 0, 0]),
        ("backward", [-1, 0, 0]),
        ("left", [0, 1, 0]),
        ("right", [0, -1, 0]),
        ("up", [0, 0, 1]),
        ("down", [0, 0, -1]),
    ],
)
def test_each_direction_word(word, expected):
    proposal = parse_command(word)
    np.testing.assert_allclose(proposal.direction, expected)
    assert proposal.magnitude == MAGNITUDE_MORE and proposal.gripper is Gripper.KEEP
    assert proposal.source is Source.HUMAN and not proposal.defer


def test_combinations_and_modifiers():
    combo = parse_command("Left, down LESS")
    np.testing.assert_allclose(combo.direction, [0, S, -S])
    assert combo.magnitude == MAGNITUDE_LESS
    three = parse_command("forward+right and up more")
    np.testing.assert_allclose(three.direction, np.array([1, -1, 1]) / np.sqrt(3))
    assert three.magnitude == MAGNITUDE_MORE


@pytest.mark.parametrize(("word", "action"), [("open", Gripper.OPEN), ("close", Gripper.CLOSE)])
def test_gripper_words(word, action):
    alone = parse_command(word)
    assert alone.gripper is action and not alone.defer
    np.testing.assert_array_equal(alone.direction, 0)
    with_motion = parse_command(f"down {word}")
    assert with_motion.gripper is action
    np.testing.assert_allclose(with_motion.direction, [0, 0, -1])


@pytest.mark.parametrize("word", ["defer", "stop", " STOP "])
def test_defer_words(word):
    proposal = parse_command(word)
    assert proposal.defer and word.strip().lower() in proposal.reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("left dwn", "unknown word 'dwn'"),
        ("", "empty"),
        ("left right", "contradict"),
        ("open close", "gripper"),
        ("more less up", "amount"),
        ("more", "needs a direction"),
        ("stop left", "alone"),
    ],
)
def test_bad_commands_raise_naming_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_command(text)


def test_custom_axes_for_an_operator_facing_the_robot():
    facing = {"left": (0, -1, 0), "right": (0, 1, 0), "up": (0, 0, 1), "down": (0, 0, -1)}
    reasoner = HumanReasoner(HumanConfig(direction_axes=facing))
    np.testing.assert_allclose(reasoner.command("left").direction, [0, -1, 0])
    with pytest.raises(ValueError, match="'forward'"):
        reasoner.command("forward")


def test_command_expires_and_bad_text_keeps_the_previous_one():
    clock = FakeClock()
    reasoner = HumanReasoner(HumanConfig(max_age_s=2.0), clock=clock)
    first = reasoner.propose(OBS)
    assert first.defer and "no human input" in first.reason
    reasoner.command("left")
    clock.now += 1.5
    with pytest.raises(ValueError):
        reasoner.command("lfet")
    np.testing.assert_allclose(reasoner.propose(OBS).direction, [0, 1, 0])
    clock.now += 1.0
    stale = reasoner.propose(OBS)
    assert stale.defer and "stale" in stale.reason and "'left'" in stale.reason
    reasoner.command("up")
    np.testing.assert_allclose(reasoner.propose(OBS).direction, [0, 0, 1])
    reasoner.clear()
    assert reasoner.propose(OBS).defer


def test_clicked_target_becomes_a_direction_from_the_end_effector():
    clock = FakeClock()
    approach = TargetApproach(dead_band_m=0.02, slow_radius_m=0.10, capture_radius_m=0.03)
    reasoner = HumanReasoner(HumanConfig(max_age_s=5.0, approach=approach), clock=clock)
    reasoner.click([0.6, 0.005, 0.1])
    far = reasoner.propose(OBS)
    np.testing.assert_allclose(far.direction, [S, 0, -S])
    assert far.magnitude == MAGNITUDE_MORE and far.source is Source.HUMAN
    np.testing.assert_allclose(far.target, [0.6, 0.005, 0.1])

    closer = reasoner.propose(Observation("x", ee_position=[0.55, 0.0, 0.1]))
    np.testing.assert_allclose(closer.direction, [1, 0, 0])
    assert closer.magnitude == MAGNITUDE_LESS

    captured = reasoner.propose(Observation("x", ee_position=[0.59, 0.0, 0.11]))
    assert captured.defer and "capture radius" in captured.reason

    clock.now += 6.0
    stale = reasoner.propose(OBS)
    assert stale.defer and "stale" in stale.reason


def test_a_command_replaces_a_target_and_vice_versa():
    reasoner = HumanReasoner(clock=FakeClock())
    reasoner.click([0.4, 0.3, 0.3])
    reasoner.command("down")
    np.testing.assert_allclose(reasoner.propose(OBS).direction, [0, 0, -1])
    reasoner.click([0.4, 0.3, 0.3])
    np.testing.assert_allclose(reasoner.propose(OBS).direction, [0, 1, 0])
    with pytest.raises(ValueError):
        reasoner.click([0.4, np.nan, 0.3])
    with pytest.raises(ValueError, match="max_age_s"):
        HumanConfig(max_age_s=0.0)


def test_backends_satisfy_the_reasoner_protocol():
    assert isinstance(HumanReasoner(), Reasoner)
    assert isinstance(VlmReasoner(VlmConfig(model="m")), Reasoner)
