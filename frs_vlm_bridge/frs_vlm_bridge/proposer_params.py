"""The proposer node's parameters (names, defaults, descriptions, ranges) and what they build.

Read-only parameters are fixed at start-up; the others (steering, timing) may change at run time
and are read once per chunk. ``get`` below is any ``name -> value`` lookup (the node passes its
``get_parameter(name).value``), so the builders are tested without a node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from frs_control.ros_params import ParameterSpec, float_range, int_range
from frs_steering.reasoning import BASE_FRAME
from frs_vlm_bridge.goals import SteerSettings
from frs_vlm_bridge.plan_ahead import PlanAheadSettings
from frs_vlm_bridge.vlm import VlmConfig

BACKENDS = ("scripted", "human", "vlm", "none")
ParameterLookup = Callable[[str], Any]


def _spec(
    name: str, default: Any, text: str, ranged: dict | None = None, runtime: bool = False
) -> ParameterSpec:
    return (name, default, text, {**(ranged or {}), "read_only": not runtime})


PARAMETERS: tuple[ParameterSpec, ...] = (
    _spec("reasoner", "scripted", f"reasoner backend, one of {list(BACKENDS)}"),
    _spec("start_enabled", True, "propose from start-up (else wait for enable)"),
    _spec("frame_id", BASE_FRAME, "robot base frame of directions"),
    _spec("arm_joints", [f"fr3_joint{i}" for i in range(1, 8)], "arm joint names"),
    _spec(
        "finger_joints",
        ["fr3_finger_joint1", "fr3_finger_joint2"],
        "finger joint names (the reasoner's gripper opening); empty = none",
    ),
    _spec(
        "finger_open_sum",
        0.08,
        "m; finger joint positions summed at a fully open gripper",
        float_range(1e-4, 1.0),
    ),
    _spec("use_camera", False, "subscribe to camera/image_raw for the reasoner"),
    _spec(
        "max_state_age",
        0.5,
        "s; wait for joint_states newer than this",
        float_range(0.0, 60.0),
        True,
    ),
    _spec("max_image_age", 1.0, "s; older images are not sent", float_range(0.0, 60.0), True),
    _spec("method", "frs", "SteerChunk method", runtime=True),
    _spec("num_steps", 0, "integration steps; 0 = policy default", int_range(0, 100000), True),
    _spec("solver", "", "ODE solver; empty = euler", runtime=True),
    _spec(
        "noise_scale", 0.0, "frs: extra noise on the reversed noise", float_range(0.0, 10.0), True
    ),
    _spec("partial_time", 0.0, "partial_noising time; 0 = default", float_range(0.0, 1.0), True),
    _spec("num_samples", 0, "sample_rank samples; 0 = default", int_range(0, 4096), True),
    _spec("seed", -1, "steering seed; negative = nondeterministic", runtime=True),
    _spec(
        "execute_rows",
        3,
        "fresh rows of each refined chunk to execute (plus rows already due when sent); 0 = all",
        int_range(0, 1000),
        True,
    ),
    _spec(
        "plan_ahead",
        True,
        "plan the next chunk while this one executes, timed to arrive as it ends",
        runtime=True,
    ),
    _spec(
        "plan_margin",
        0.02,
        "s; plan_ahead sends the next chunk this much before the current one ends",
        float_range(0.0, 1.0),
        True,
    ),
    _spec("steer_timeout", 5.0, "s to wait for a refined chunk", float_range(0.01, 600.0), True),
    _spec("execute_timeout", 10.0, "s to wait for execution", float_range(0.01, 600.0), True),
    _spec("retry_delay", 0.1, "s to wait after a failed chunk", float_range(0.0, 10.0), True),
    # scripted
    _spec("scripted_seed", 0, "scripted reasoner noise seed (+ episode number)", runtime=True),
    _spec("scripted_angular_noise_deg", 0.0, "scripted: direction noise", float_range(0.0, 180.0)),
    _spec(
        "scripted_wrong_direction_rate", 0.0, "scripted: reversed directions", float_range(0.0, 1.0)
    ),
    _spec(
        "scripted_defer_at",
        [""],
        "scripted: precision points handed to the policy, of grasp release push ([''] = none)",
    ),
    _spec("scripted_command_release", True, "scripted: say 'open' at the release point"),
    _spec("scripted_command_grasp", True, "scripted: steer to the grasp, say 'close' there"),
    _spec("scripted_state_gripper", False, "scripted: say the phase's gripper state each chunk"),
    _spec(
        "scripted_aim_error",
        0.0,
        "scripted: m each cube and mat is perceived off its centre (per episode)",
        float_range(0.0, 1.0),
    ),
    # human
    _spec("human_max_age", 2.0, "s a human command or click stays valid", float_range(0.01, 1e6)),
    _spec("camera_frame_id", "", "frame of clicked points needing the static transform"),
    _spec("camera_translation", [0.0, 0.0, 0.0], "camera origin in frame_id (m), no tf2"),
    _spec("camera_quaternion", [0.0, 0.0, 0.0, 1.0], "camera orientation (x y z w), no tf2"),
    # vlm
    _spec("vlm_base_url", "http://127.0.0.1:8000/v1", "OpenAI-compatible API root"),
    _spec("vlm_model", "", "served model name"),
    _spec("vlm_api_key_env", "", "environment variable holding the API key"),
    _spec("vlm_api_key_file", "", "file holding the API key"),
    _spec("vlm_timeout_s", 10.0, "s per response wait", float_range(0.001, 600.0)),
    _spec("vlm_connect_timeout_s", 2.0, "s per TCP connect", float_range(0.001, 600.0)),
    _spec("vlm_deadline_s", 0.0, "s per proposal incl. retries; 0 = none", float_range(0.0, 600.0)),
    _spec("vlm_max_retries", 2, "retries of transient failures", int_range(0, 100)),
    _spec("vlm_retry_backoff_s", 0.5, "s first retry backoff", float_range(0.0, 60.0)),
    _spec("vlm_temperature", 0.0, "sampling temperature", float_range(0.0, 2.0)),
    _spec("vlm_max_tokens", 256, "answer token limit", int_range(1, 100000)),
    _spec("vlm_json_mode", "object", "off | object | schema"),
    _spec("vlm_scene_note", "", "rig-specific prompt text"),
    _spec("vlm_max_image_side", 0, "downscale images to this side; 0 = no", int_range(0, 10000)),
)


def steer_settings(get: ParameterLookup) -> SteerSettings:
    """The steering parameters as they are now."""
    return SteerSettings(
        method=str(get("method")),
        num_steps=int(get("num_steps")),
        solver=str(get("solver")),
        noise_scale=float(get("noise_scale")),
        partial_time=float(get("partial_time")),
        num_samples=int(get("num_samples")),
        seed=int(get("seed")),
    )


def scripted_config(get: ParameterLookup) -> Any:
    """The scripted reasoner's ``frs_sim.reasoner.ReasonerConfig`` (imports the simulation: only
    for the scripted backend); ValueError names an unknown ``scripted_defer_at`` point."""
    from frs_sim.reasoner import ReasonerConfig

    return ReasonerConfig(
        angular_noise_deg=float(get("scripted_angular_noise_deg")),
        wrong_direction_rate=float(get("scripted_wrong_direction_rate")),
        defer_at=tuple(str(point) for point in get("scripted_defer_at") if point),
        command_release=bool(get("scripted_command_release")),
        command_grasp=bool(get("scripted_command_grasp")),
        state_gripper=bool(get("scripted_state_gripper")),
        aim_error=float(get("scripted_aim_error")),
    )


def plan_ahead_settings(get: ParameterLookup) -> PlanAheadSettings:
    """The timing parameters as they are now."""
    return PlanAheadSettings(
        enabled=bool(get("plan_ahead")),
        margin_s=float(get("plan_margin")),
        retry_delay_s=float(get("retry_delay")),
    )


def vlm_config(get: ParameterLookup) -> VlmConfig:
    """The ``vlm_*`` parameters as a ``VlmConfig`` (ValueError names a bad one)."""

    def optional(name: str) -> str | None:
        return str(get(name)) or None

    return VlmConfig(
        model=str(get("vlm_model")),
        base_url=str(get("vlm_base_url")),
        timeout_s=float(get("vlm_timeout_s")),
        connect_timeout_s=float(get("vlm_connect_timeout_s")),
        deadline_s=float(get("vlm_deadline_s")) or None,
        max_retries=int(get("vlm_max_retries")),
        retry_backoff_s=float(get("vlm_retry_backoff_s")),
        api_key_env=optional("vlm_api_key_env"),
        api_key_file=optional("vlm_api_key_file"),
        temperature=float(get("vlm_temperature")),
        max_tokens=int(get("vlm_max_tokens")),
        json_mode=str(get("vlm_json_mode")),
        scene_note=str(get("vlm_scene_note")),
        max_image_side=int(get("vlm_max_image_side")) or None,
    )
