"""Scripted reasoner of the simulated benchmark: sub-goals, deferral and coarseness knobs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from frs_sim.env import GRASP_HEIGHT
from frs_sim.experts import HOVER_HEIGHT, PLACE_HEIGHT, PUSH_HEIGHT, PUSH_STANDOFF
from frs_sim.reasoner import (
    DEFER_POINTS,
    MAGNITUDE_LITTLE,
    ReasonerConfig,
    ScriptedReasoner,
    observation_from_env,
    task_from_instruction,
)
from frs_sim.tasks import find_task, get_split
from frs_steering.reasoning import MAGNITUDE_LESS, MAGNITUDE_MORE, Gripper, Reasoner, Source

PLACE = find_task("place_red_yellow")
PUSH = find_task("push_green_purple")
HOME = np.array([0.45, 0.0, 0.25])


def env_obs(ee, cubes, mats, opening=1.0, instruction="transfer the red cube to the yellow pad"):
    """A minimal environment observation dict (only the fields the reasoner reads)."""
    return {
        "ee_pos": np.asarray(ee, dtype=np.float32),
        "object_pos": np.asarray(cubes, dtype=np.float32),
        "target_pos": np.asarray(mats, dtype=np.float32),
        "gripper": np.array([opening], dtype=np.float32),
        "instruction": instruction,
    }


CUBES = [[0.60, -0.20, 0.02], [0.40, 0.20, 0.02], [0.62, 0.15, 0.02]]
MATS = [[0.45, 0.20, 0.0006], [0.50, -0.05, 0.0006], [0.65, 0.0, 0.0006]]


def angle(a, b) -> float:
    return math.acos(float(np.clip(np.dot(a, b), -1.0, 1.0)))


def deferring(**knobs) -> ReasonerConfig:
    """The reasoner of the first generalist's protocol, with ``knobs`` changed: it defers at every
    precision point and commands neither grasp nor release (the default hands nothing over)."""
    defaults = {"defer_at": DEFER_POINTS, "command_release": False, "command_grasp": False}
    return ReasonerConfig(**{**defaults, **knobs})


def test_the_default_reasoner_hands_nothing_over():
    """Grasp, release and push contact are steered or commanded, never left to the policy."""
    reasoner = ScriptedReasoner()
    near_grasp = [CUBES[0][0], CUBES[0][1], GRASP_HEIGHT + 0.03]  # inside the defer radius
    down = reasoner.propose_for(env_obs(near_grasp, CUBES, MATS), PLACE)
    assert not down.defer and down.direction[2] < 0
    at = [CUBES[0][0] + 0.01, CUBES[0][1], GRASP_HEIGHT + 0.005]
    close = reasoner.propose_for(env_obs(at, CUBES, MATS), PLACE)
    assert not close.defer and close.gripper is Gripper.CLOSE
    over = [MATS[0][0], MATS[0][1], PLACE_HEIGHT + 0.03]
    held = [[over[0], over[1], over[2] - 0.035], CUBES[1], CUBES[2]]
    release = reasoner.propose_for(env_obs(over, held, MATS, opening=0.45), PLACE)
    assert not release.defer and release.gripper is Gripper.OPEN
    cube, mat = np.array(CUBES[1]), np.array(MATS[1])
    d = (mat[:2] - cube[:2]) / np.linalg.norm(mat[:2] - cube[:2])
    near_contact = [*(cube[:2] - PUSH_STANDOFF * d), PUSH_HEIGHT + 0.03]
    assert not reasoner.propose_for(env_obs(near_contact, CUBES, MATS), PUSH).defer
    assert ReasonerConfig() == deferring(defer_at=(), command_release=True, command_grasp=True)


def test_implements_reasoner_protocol():
    assert isinstance(ScriptedReasoner(), Reasoner)


def test_far_from_the_cube_points_toward_the_hover_point_with_more():
    reasoner = ScriptedReasoner(deferring())
    proposal = reasoner.propose_for(env_obs(HOME, CUBES, MATS), PLACE)
    assert not proposal.defer and proposal.source is Source.SCRIPTED
    goal = np.array([CUBES[0][0], CUBES[0][1], HOVER_HEIGHT])
    offset = goal - HOME
    assert proposal.direction @ offset > 0.8 * np.linalg.norm(offset)
    assert set(np.round(np.abs(proposal.direction) * math.sqrt(3), 6)) <= {0.0, 1.0, 1.224745}
    assert np.all(np.sign(proposal.direction) == np.sign(offset))  # per-axis signs
    assert proposal.magnitude == MAGNITUDE_MORE
    np.testing.assert_allclose(proposal.target, goal, atol=1e-6)


def test_above_the_cube_descends_slowly_then_defers_within_the_radius():
    reasoner = ScriptedReasoner(deferring(defer_radius=0.04))
    above = [CUBES[0][0] + 0.01, CUBES[0][1], GRASP_HEIGHT + 0.06]
    proposal = reasoner.propose_for(env_obs(above, CUBES, MATS), PLACE)
    assert not proposal.defer
    np.testing.assert_allclose(proposal.direction, [0.0, 0.0, -1.0])
    assert proposal.magnitude == MAGNITUDE_LESS
    near = [CUBES[0][0] + 0.01, CUBES[0][1], GRASP_HEIGHT + 0.03]
    proposal = reasoner.propose_for(env_obs(near, CUBES, MATS), PLACE)
    assert proposal.defer and not proposal.direction.any()
    assert "within" in proposal.reason


def test_after_the_grasp_the_sub_goal_is_the_mat_then_defers_near_release():
    reasoner = ScriptedReasoner(deferring())
    ee = [CUBES[0][0], CUBES[0][1], 0.10]
    held = [[ee[0], ee[1], 0.06], CUBES[1], CUBES[2]]  # cube between closed fingers
    proposal = reasoner.propose_for(env_obs(ee, held, MATS, opening=0.45), PLACE)
    assert not proposal.defer
    offset = np.array(MATS[0][:2]) - np.array(ee[:2])
    assert proposal.direction[:2] @ offset > 0
    over = [MATS[0][0], MATS[0][1], PLACE_HEIGHT + 0.03]
    held = [[over[0], over[1], over[2] - 0.035], CUBES[1], CUBES[2]]
    assert reasoner.propose_for(env_obs(over, held, MATS, opening=0.45), PLACE).defer


def test_command_release_opens_the_gripper_over_the_mat_and_still_defers_the_grasp():
    reasoner = ScriptedReasoner(deferring(command_release=True))
    over = [MATS[0][0], MATS[0][1], PLACE_HEIGHT + 0.03]
    held = [[over[0], over[1], over[2] - 0.035], CUBES[1], CUBES[2]]
    proposal = reasoner.propose_for(env_obs(over, held, MATS, opening=0.45), PLACE)
    assert not proposal.defer and proposal.gripper is Gripper.OPEN
    assert not proposal.direction.any() and proposal.magnitude == MAGNITUDE_LESS
    # Far from the mat it carries the cube with the gripper kept; at the cube it defers.
    ee = [CUBES[0][0], CUBES[0][1], 0.10]
    far = [[ee[0], ee[1], 0.06], CUBES[1], CUBES[2]]
    carry = reasoner.propose_for(env_obs(ee, far, MATS, opening=0.45), PLACE)
    assert not carry.defer and carry.gripper is Gripper.KEEP and carry.direction.any()
    near = [CUBES[0][0] + 0.01, CUBES[0][1], GRASP_HEIGHT + 0.03]
    assert reasoner.propose_for(env_obs(near, CUBES, MATS), PLACE).defer
    # A push has no release: its contact point is deferred as before.
    cube, mat = np.array(CUBES[1]), np.array(MATS[1])
    d = (mat[:2] - cube[:2]) / np.linalg.norm(mat[:2] - cube[:2])
    contact = np.array([*(cube[:2] - 0.045 * d), PUSH_HEIGHT + 0.01])
    assert reasoner.subgoal(PUSH, contact, cube, mat, gripper_opening=0.0).gripper is Gripper.KEEP


def test_command_grasp_steers_to_the_cube_closes_there_and_reopens_after_a_miss():
    reasoner = ScriptedReasoner(deferring(command_grasp=True))  # grasp still in defer_at
    grasp = np.array([CUBES[0][0], CUBES[0][1], GRASP_HEIGHT])
    near = grasp + np.array([0.0, 0.0, 0.03])  # inside the defer radius: steered, not deferred
    down = reasoner.propose_for(env_obs(near, CUBES, MATS), PLACE)
    assert not down.defer and down.gripper is Gripper.KEEP and down.direction[2] < 0
    at = grasp + np.array([0.01, 0.0, 0.005])
    close = reasoner.propose_for(env_obs(at, CUBES, MATS), PLACE)
    assert not close.defer and close.gripper is Gripper.CLOSE and not close.direction.any()
    # Closed on nothing (cube not between the fingers): open again before the next approach.
    missed = reasoner.propose_for(env_obs(near, CUBES, MATS, opening=0.0), PLACE)
    assert missed.gripper is Gripper.OPEN and not missed.direction.any()
    # Without the knob the same point is handed over to the policy.
    assert ScriptedReasoner(deferring()).propose_for(env_obs(at, CUBES, MATS), PLACE).defer
    with pytest.raises(ValueError, match="close_radius"):
        deferring(close_radius=-0.01)


def test_the_protocol_path_reads_the_gripper_so_a_commanded_grasp_moves_on():
    """``propose`` (the ROS proposer's path) with the opening from the finger joints: once
    the gripper has closed on the cube it carries it on, instead of saying "close" forever."""
    reasoner = ScriptedReasoner(deferring(command_grasp=True, defer_at=()))
    at = np.array([CUBES[0][0] + 0.01, CUBES[0][1], GRASP_HEIGHT + 0.005])
    closed_on_cube = observation_from_env(env_obs(at, CUBES, MATS, opening=0.3))
    assert closed_on_cube.gripper_opening == pytest.approx(0.3)
    carry = reasoner.propose(closed_on_cube)
    assert carry.gripper is not Gripper.CLOSE and carry.direction.any()
    assert "release point" in carry.reason  # carrying it to the mat
    # Without a gripper reading the cube still rests on the table: read as not yet grasped.
    unknown = dataclasses.replace(closed_on_cube, gripper_opening=None)
    assert reasoner.propose(unknown).gripper is Gripper.CLOSE
    opened = observation_from_env(env_obs(at, CUBES, MATS, opening=1.0))
    assert reasoner.propose(opened).gripper is Gripper.CLOSE


def test_state_gripper_says_the_phase_gripper_state_with_every_motion():
    """Open on the way to a grasp, closed while carrying and for the whole push; a gripper
    command (close at the grasp) and deferrals are unchanged; off, the gripper is kept."""
    stated = ScriptedReasoner(deferring(state_gripper=True, command_grasp=True))
    kept = ScriptedReasoner(deferring(command_grasp=True))
    far = [CUBES[0][0] + 0.1, CUBES[0][1], 0.2]
    toward = stated.propose_for(env_obs(far, CUBES, MATS), PLACE)
    assert toward.direction.any() and toward.gripper is Gripper.OPEN
    assert kept.propose_for(env_obs(far, CUBES, MATS), PLACE).gripper is Gripper.KEEP
    ee = [CUBES[0][0], CUBES[0][1], 0.10]
    held = [[ee[0], ee[1], 0.06], CUBES[1], CUBES[2]]
    carry = stated.propose_for(env_obs(ee, held, MATS, opening=0.45), PLACE)
    assert carry.direction.any() and carry.gripper is Gripper.CLOSE
    at = [CUBES[0][0] + 0.01, CUBES[0][1], GRASP_HEIGHT + 0.005]
    close = stated.propose_for(env_obs(at, CUBES, MATS), PLACE)
    assert close.gripper is Gripper.CLOSE and not close.direction.any()
    push = stated.propose_for(env_obs(HOME, CUBES, MATS), PUSH)
    assert push.direction.any() and push.gripper is Gripper.CLOSE


def test_defer_at_steers_through_the_points_it_omits_until_the_dead_band():
    cube, mat = np.array(CUBES[1]), np.array(MATS[1])
    d = (mat[:2] - cube[:2]) / np.linalg.norm(mat[:2] - cube[:2])
    contact = np.array([*(cube[:2] - PUSH_STANDOFF * d), PUSH_HEIGHT])
    near_contact = contact + np.array([0.0, 0.0, 0.03])  # 3 cm above: inside the defer radius
    every_point = ScriptedReasoner(deferring())
    assert every_point.propose_for(env_obs(near_contact, CUBES, MATS), PUSH).defer
    grasp_only = ScriptedReasoner(deferring(defer_at=("grasp",)))
    proposal = grasp_only.propose_for(env_obs(near_contact, CUBES, MATS), PUSH)
    assert not proposal.defer and proposal.direction[2] < -0.9  # down onto the contact point
    at_contact = grasp_only.propose_for(env_obs(contact, CUBES, MATS), PUSH)
    assert not at_contact.defer and at_contact.reason.startswith("push_through")
    near_grasp = [CUBES[0][0] + 0.01, CUBES[0][1], GRASP_HEIGHT + 0.03]
    assert grasp_only.propose_for(env_obs(near_grasp, CUBES, MATS), PLACE).defer
    nowhere = ScriptedReasoner(deferring(defer_at=()))
    assert not nowhere.propose_for(env_obs(near_grasp, CUBES, MATS), PLACE).defer
    with pytest.raises(ValueError, match="unknown points"):
        deferring(defer_at=("grasp", "wave"))


def test_drop_radius_opens_the_gripper_over_the_mat_at_any_height():
    reasoner = ScriptedReasoner(deferring(drop_radius=0.02))
    high = [MATS[0][0] + 0.01, MATS[0][1], 0.15]
    held = [[high[0], high[1], high[2] - 0.035], CUBES[1], CUBES[2]]
    proposal = reasoner.propose_for(env_obs(high, held, MATS, opening=0.45), PLACE)
    assert not proposal.defer and proposal.gripper is Gripper.OPEN
    beside = [MATS[0][0] + 0.04, MATS[0][1], 0.15]
    held = [[beside[0], beside[1], beside[2] - 0.035], CUBES[1], CUBES[2]]
    proposal = reasoner.propose_for(env_obs(beside, held, MATS, opening=0.45), PLACE)
    assert proposal.gripper is Gripper.KEEP and proposal.direction[0] < 0  # still carrying
    with pytest.raises(ValueError, match="drop_radius"):
        deferring(drop_radius=-0.01)


def test_fine_radius_says_a_little_near_the_sub_goal():
    above = [CUBES[0][0] + 0.01, CUBES[0][1], GRASP_HEIGHT + 0.07]
    for fine, expected in ((0.0, MAGNITUDE_LESS), (0.08, MAGNITUDE_LITTLE)):
        reasoner = ScriptedReasoner(deferring(fine_radius=fine))
        assert reasoner.propose_for(env_obs(above, CUBES, MATS), PLACE).magnitude == expected


def test_push_goes_behind_the_cube_then_through():
    reasoner = ScriptedReasoner(deferring())
    cube, mat = np.array(CUBES[1]), np.array(MATS[1])
    goal = reasoner.subgoal(PUSH, HOME, cube, mat, gripper_opening=0.0)
    d = (mat[:2] - cube[:2]) / np.linalg.norm(mat[:2] - cube[:2])
    assert (goal.point[:2] - cube[:2]) @ d < 0  # behind the cube, seen from the mat
    behind = np.array([*(cube[:2] - 0.06 * d), PUSH_HEIGHT])
    through = reasoner.subgoal(PUSH, behind, cube, mat, gripper_opening=0.0)
    assert through.phase == "push_through" and through.slow
    proposal = reasoner.proposal_for(through, behind)
    assert proposal.direction[:2] @ d > 0.7 and proposal.magnitude == MAGNITUDE_LESS


def test_wrong_direction_rate_one_flips_every_direction():
    clean = ScriptedReasoner(deferring(), seed=1).propose_for(env_obs(HOME, CUBES, MATS), PLACE)
    wrong = ScriptedReasoner(deferring(wrong_direction_rate=1.0), seed=1)
    for _ in range(5):
        proposal = wrong.propose_for(env_obs(HOME, CUBES, MATS), PLACE)
        np.testing.assert_allclose(proposal.direction, -clean.direction)
        assert "wrong direction" in proposal.reason


def test_angular_noise_is_bounded_and_seeded():
    clean = ScriptedReasoner(deferring()).propose_for(env_obs(HOME, CUBES, MATS), PLACE).direction
    noisy = ScriptedReasoner(deferring(angular_noise_deg=20.0), seed=3)
    angles = []
    for _ in range(200):
        direction = noisy.propose_for(env_obs(HOME, CUBES, MATS), PLACE).direction
        assert abs(np.linalg.norm(direction) - 1.0) < 1e-9
        angles.append(angle(direction, clean))
    assert max(angles) <= math.radians(20.0) + 1e-9
    assert max(angles) > math.radians(10.0)  # the noise does act
    again = ScriptedReasoner(deferring(angular_noise_deg=20.0), seed=3)
    first = again.propose_for(env_obs(HOME, CUBES, MATS), PLACE).direction
    noisy.reset(3)
    np.testing.assert_allclose(
        noisy.propose_for(env_obs(HOME, CUBES, MATS), PLACE).direction, first
    )


def test_aim_error_displaces_every_target_by_its_size_and_keeps_seen_relations():
    """Each cube and mat is perceived ``aim_error`` off (fixed per episode, seeded); sub-goals
    aim at the perceived poses, a held cube and a finished task are judged on the true ones."""
    error = 0.03
    reasoner = ScriptedReasoner(deferring(aim_error=error, command_grasp=True), seed=5)
    offsets = dict(reasoner.aim_offsets)
    assert len(offsets) == 6
    for offset in offsets.values():
        assert offset[2] == 0.0 and np.linalg.norm(offset) == pytest.approx(error)
    assert len({tuple(np.round(o, 9)) for o in offsets.values()}) == 6
    cube, mat = np.array(CUBES[0]), np.array(MATS[0])
    seen_cube = cube + offsets["red_cube"]
    goal = reasoner.subgoal(PLACE, HOME, cube, mat, gripper_opening=1.0)
    np.testing.assert_allclose(goal.point, [*seen_cube[:2], HOVER_HEIGHT])
    # closes where it thinks the cube is (within close_radius of the perceived grasp point)
    at_seen = np.array([*seen_cube[:2], GRASP_HEIGHT])
    assert reasoner.subgoal(PLACE, at_seen, cube, mat, gripper_opening=1.0).phase == "close"
    # the held cube is seen in the gripper and carried to the perceived mat
    ee = np.array([cube[0], cube[1], 0.10])
    held = np.array([ee[0], ee[1], 0.06])
    carry = reasoner.subgoal(PLACE, ee, held, mat, gripper_opening=0.45)
    assert carry.hold is Gripper.CLOSE
    np.testing.assert_allclose(carry.point[:2], (mat + offsets["yellow_mat"])[:2])
    # a cube resting on its true mat is done, whatever the perception error
    resting = np.array([mat[0], mat[1], 0.02])
    assert reasoner.subgoal(PLACE, HOME, resting, mat, gripper_opening=1.0).phase == "done"
    # seeded per episode; the error does not shift the other knobs' draws
    again = ScriptedReasoner(deferring(aim_error=error), seed=5)
    for name, offset in offsets.items():
        np.testing.assert_allclose(again.aim_offsets[name], offset)
    again.reset(6)
    assert not np.allclose(again.aim_offsets["red_cube"], offsets["red_cube"])
    plain = ScriptedReasoner(deferring(), seed=5)
    assert all(not o.any() for o in plain.aim_offsets.values())
    assert plain.rng.random() == ScriptedReasoner(deferring(aim_error=error), seed=5).rng.random()
    with pytest.raises(ValueError, match="aim_error"):
        deferring(aim_error=-0.01)


def test_quantize_off_gives_the_exact_direction():
    reasoner = ScriptedReasoner(deferring(quantize=False))
    proposal = reasoner.propose_for(env_obs(HOME, CUBES, MATS), PLACE)
    goal = np.array([CUBES[0][0], CUBES[0][1], HOVER_HEIGHT])
    np.testing.assert_allclose(
        proposal.direction, (goal - HOME) / np.linalg.norm(goal - HOME), atol=1e-6
    )


@pytest.mark.parametrize("split", ["novel", "pretrain"])
def test_instructions_parse_back_to_their_task(split):
    for task in get_split(split):
        for text in task.instructions():
            parsed = task_from_instruction(text)
            assert (parsed.verb, parsed.obj, parsed.target) == (task.verb, task.obj, task.target)


def test_protocol_propose_matches_the_task_aware_path():
    obs = env_obs(HOME, CUBES, MATS)
    via_protocol = ScriptedReasoner(deferring()).propose(observation_from_env(obs))
    direct = ScriptedReasoner(deferring()).propose_for(obs, PLACE)
    np.testing.assert_allclose(via_protocol.direction, direct.direction)
    unknown = observation_from_env({**obs, "instruction": "do a little dance"})
    assert ScriptedReasoner().propose(unknown).defer
