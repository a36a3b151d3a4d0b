"""Shared reasoner types: proposal invariants, direction quantisation, target approach."""

import re
from pathlib import Path

import numpy as np
import pytest

from frs_steering.reasoning import (
    DEFAULT_DIRECTION_AXES,
    MAGNITUDE_LESS,
    MAGNITUDE_MORE,
    CoarseProposal,
    Gripper,
    Observation,
    Source,
    TargetApproach,
    axis_signs,
    defer,
    direction_from_words,
    make_direction_axes,
    quantize_direction,
    steer_toward,
)

MSG_FILE = Path(__file__).resolve().parents[2] / "frs_msgs" / "msg" / "CoarseReference.msg"
S = 1 / np.sqrt(2)


def test_enum_values_match_the_ros_message_constants():
    constants = dict(re.findall(r"^uint8 (\w+) = (\d+)", MSG_FILE.read_text(), re.MULTILINE))
    for source in Source:
        assert int(constants[f"SOURCE_{source.name}"]) == source.value
    for action in Gripper:
        assert int(constants[f"GRIPPER_{action.name}"]) == action.value
    assert len(constants) == len(Source) + len(Gripper)


def test_quantize_direction_takes_signs_then_normalises():
    np.testing.assert_allclose(quantize_direction([0.3, -0.01, -2.0], dead_band=0.02), [S, 0, -S])
    np.testing.assert_allclose(quantize_direction([0.5, 0.5, 0.5]), np.ones(3) / np.sqrt(3))
    np.testing.assert_array_equal(quantize_direction([0.01, -0.01, 0.0], dead_band=0.02), 0)
    np.testing.assert_array_equal(axis_signs([1.0, 0.1, -0.5], relative_threshold=0.3), [1, 0, -1])
    with pytest.raises(ValueError):
        axis_signs([1, 2, 3], dead_band=-1)


def test_direction_words_combine_and_reject_contradictions():
    axes = DEFAULT_DIRECTION_AXES
    np.testing.assert_allclose(direction_from_words(["left", "down"], axes), [0, S, -S])
    np.testing.assert_array_equal(direction_from_words([], axes), 0)
    with pytest.raises(ValueError, match="'left' and 'right'"):
        direction_from_words(["left", "right"], axes)
    with pytest.raises(ValueError, match="'sideways'"):
        direction_from_words(["sideways"], axes)
    with pytest.raises(ValueError, match="repeated"):
        direction_from_words(["up", "up"], axes)


def test_direction_axes_are_validated_and_normalised():
    axes = make_direction_axes({"toward_camera": (2.0, 0.0, 0.0)})
    assert axes["toward_camera"] == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="nonzero"):
        make_direction_axes({"nowhere": (0, 0, 0)})
    with pytest.raises(ValueError, match="lowercase"):
        make_direction_axes({"Left": (0, 1, 0)})


def test_proposal_invariants():
    proposal = CoarseProposal(source=Source.VLM, direction=[0, 1, 0], gripper=2)
    assert proposal.gripper is Gripper.CLOSE and not proposal.defer
    assert not proposal.direction.flags.writeable
    with pytest.raises(ValueError, match="unit vector"):
        CoarseProposal(source=Source.HUMAN, direction=[0, 2, 0])
    with pytest.raises(ValueError, match="zero direction"):
        CoarseProposal(source=Source.HUMAN, defer=True, direction=[1, 0, 0])
    with pytest.raises(ValueError, match="magnitude"):
        CoarseProposal(source=Source.HUMAN, magnitude=2.0)
    with pytest.raises(ValueError):
        CoarseProposal(source=Source.HUMAN, target=[1, 2])
    deferral = defer("operator away", Source.HUMAN)
    assert deferral.defer and deferral.reason == "operator away"
    np.testing.assert_array_equal(deferral.direction, 0)


def test_observation_validates_its_fields():
    obs = Observation("pick", ee_position=[0.4, 0, 0.3], objects={"cube": [0.5, 0.1, 0.02]})
    assert obs.ee_position.shape == (3,) and obs.objects["cube"].shape == (3,)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        Observation("pick", ee_position=[0, 0, 0], image=np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="3 elements"):
        Observation("pick", ee_position=[0, 0])
    assert Observation("pick", ee_position=[0, 0, 0]).gripper_opening is None
    assert Observation("pick", ee_position=[0, 0, 0], gripper_opening=1).gripper_opening == 1.0
    for opening in (-0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="gripper_opening"):
            Observation("pick", ee_position=[0, 0, 0], gripper_opening=opening)


def test_steer_toward_target():
    approach = TargetApproach(dead_band_m=0.02, slow_radius_m=0.10, capture_radius_m=0.03)
    far = steer_toward([0.4, 0.0, 0.3], [0.6, 0.01, 0.1], Source.SCRIPTED, approach)
    np.testing.assert_allclose(far.direction, [S, 0, -S])
    assert far.magnitude == MAGNITUDE_MORE and not far.defer
    np.testing.assert_allclose(far.target, [0.6, 0.01, 0.1])
    near = steer_toward([0.4, 0.0, 0.3], [0.4, -0.06, 0.3], Source.SCRIPTED, approach)
    np.testing.assert_allclose(near.direction, [0, -1, 0])
    assert near.magnitude == MAGNITUDE_LESS
    reached = steer_toward([0.4, 0.0, 0.3], [0.41, 0.01, 0.3], Source.SCRIPTED, approach)
    assert reached.defer and "capture radius" in reached.reason
    wide_band = TargetApproach(dead_band_m=0.05, capture_radius_m=0.03)
    inside_band = steer_toward([0, 0, 0], [0.04, 0.04, 0.0], Source.SCRIPTED, wide_band)
    assert inside_band.defer and "dead band" in inside_band.reason
