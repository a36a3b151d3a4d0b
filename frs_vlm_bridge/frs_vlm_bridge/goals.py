"""The proposer's steering goal: a proposal and the steering parameters become a ``SteerChunk``
goal whose reference and observation share one stamp. Pure message building (no node).
"""

from __future__ import annotations

from dataclasses import dataclass

from builtin_interfaces.msg import Time

from frs_msgs.action import SteerChunk
from frs_steering.reasoning import CoarseProposal
from frs_steering.ros_messages import proposal_to_msg


@dataclass(frozen=True)
class SteerSettings:
    """How the steering node refines each reference (the proposer's steering parameters)."""

    method: str = "frs"
    num_steps: int = 0  # 0 = the policy's default
    solver: str = ""  # "" = euler
    noise_scale: float = 0.0
    partial_time: float = 0.0  # 0 = the server's default
    num_samples: int = 0  # 0 = the server's default
    seed: int = -1  # negative = nondeterministic


def steer_goal(
    proposal: CoarseProposal,
    *,
    stamp: Time,
    frame_id: str,
    instruction: str,
    settings: SteerSettings,
) -> SteerChunk.Goal:
    """The goal refining ``proposal``; its reference carries the same stamp as the goal."""
    return SteerChunk.Goal(
        observation_stamp=stamp,
        reference=proposal_to_msg(
            proposal, stamp=stamp, frame_id=frame_id, instruction=instruction
        ),
        method=settings.method,
        num_steps=settings.num_steps,
        solver=settings.solver,
        noise_scale=settings.noise_scale,
        partial_time=settings.partial_time,
        num_samples=settings.num_samples,
        seed=settings.seed,
    )
