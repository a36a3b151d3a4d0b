"""The policy I/O seam: adapter registry, droid adapter, stamp matching, goal/output helpers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image, JointState

from frs_control.kinematics import REST_QPOS, ArmKinematics
from frs_control.messages import ns_to_stamp
from frs_steering.adapters import ADAPTERS, ObservationAdapter, adapter_class, make_adapter
from frs_steering.adapters.base import ReferenceSettings, Sample
from frs_steering.adapters.droid import DroidAdapter, resize_nearest
from frs_steering.adapters.droid_demo import demo_policy
from frs_steering.observation import InputBuffers, ObservationError
from frs_steering.policy import ActionSpec
from frs_steering.reasoning import CoarseProposal, Gripper, Source
from frs_steering.reference import JointVelocityLayout, joint_velocity_reference
from frs_steering.steer import steer
from frs_steering.steering_goals import GoalCanceled, GoalPreempted, StepMonitor, bound_output

ARM = [f"fr3_joint{i}" for i in range(1, 8)]
FINGERS = ["fr3_finger_joint1", "fr3_finger_joint2"]


@pytest.fixture(scope="module")
def droid_policy():  # noqa: ANN201
    return demo_policy(train_steps=150)


def joint_msg(stamp_ns: int, q: np.ndarray = REST_QPOS, fingers: float = 0.02) -> JointState:
    msg = JointState(name=ARM + FINGERS, position=[*map(float, q), fingers, fingers])
    msg.header.stamp = ns_to_stamp(stamp_ns)
    return msg


def image_msg(stamp_ns: int, rgb: tuple[int, int, int], size: int = 48) -> Image:
    """A bgr8 image of one colour (exercises the channel order and the resize)."""
    pixels = np.empty((size, size + 16, 3), dtype=np.uint8)
    pixels[:] = rgb[::-1]
    msg = Image(height=size, width=size + 16, encoding="bgr8", step=(size + 16) * 3)
    msg.data = pixels.tobytes()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    return msg


def test_core_imports_no_ros_and_no_simulator() -> None:
    code = (
        "import sys\n"
        "import frs_steering.steer, frs_steering.learning.noise_policy\n"
        "import frs_steering.learning.noise_sac, frs_steering.learning.noise_data\n"
        "import frs_steering.model, frs_steering.checkpoint, frs_steering.train\n"
        "import frs_steering.adapters.droid, frs_steering.observation\n"
        "bad = [m for m in ('rclpy', 'mujoco', 'gymnasium', 'frs_sim') if m in sys.modules]\n"
        "assert 'torch' in sys.modules\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_registry_names_and_paths() -> None:
    assert set(ADAPTERS) >= {"tabletop", "droid"}
    assert adapter_class("droid") is DroidAdapter
    assert adapter_class("frs_steering.adapters.droid:DroidAdapter") is DroidAdapter
    with pytest.raises(ValueError, match="unknown observation adapter 'nope'.*droid"):
        adapter_class("nope")
    with pytest.raises(ValueError, match="is not an ObservationAdapter"):
        adapter_class("frs_steering.policy:ActionSpec")
    with pytest.raises(ValueError, match="cannot be loaded"):
        adapter_class("no_such_module:Thing")
    with pytest.raises(ValueError, match="has no options"):
        make_adapter("droid", {"camera_names": ["a"]})
    with pytest.raises(ValueError, match="one image topic per distinct camera"):
        make_adapter("droid", {"cameras": ["a", "b"], "image_topics": ["a/image_raw"]})


def test_droid_layout_and_options() -> None:
    adapter = make_adapter("droid")
    assert isinstance(adapter, ObservationAdapter)
    layout = adapter.layout
    assert layout.action_space == "joint_velocity" and layout.gripper_index() == 7
    assert layout.control_dt == pytest.approx(1 / 15) and len(layout.dim_names) == 8
    assert [s.topic for s in adapter.streams()] == [
        "exterior_1/image_raw",
        "exterior_2/image_raw",
        "wrist/image_raw",
    ]
    names = {name for name, _, _ in DroidAdapter.all_options()}
    assert {"cameras", "image_topics", "arm_joints", "control_dt", "frame_id"} <= names


def test_droid_bind_rejects_a_policy_without_its_cameras(droid_policy) -> None:  # noqa: ANN001
    adapter = make_adapter("droid", {"cameras": ["front", "top", "wrist"]})
    with pytest.raises(ValueError, match="cameras"):
        adapter.bind(droid_policy)
    make_adapter("droid").bind(droid_policy)


def test_resize_nearest_keeps_blocks() -> None:
    image = np.zeros((4, 8, 3), dtype=np.uint8)
    image[:, 4:] = 255
    small = resize_nearest(image, 2)
    assert small.shape == (2, 2, 3)
    assert (small[:, 0] == 0).all() and (small[:, 1] == 255).all()


def test_images_from_topics_condition_the_policy(droid_policy) -> None:  # noqa: ANN001
    """Red scenes drive the joints positively, blue ones negatively (the demo policy's rule)."""
    adapter = make_adapter("droid")
    adapter.bind(droid_policy)
    means = {}
    for name, colour in {"red": (230, 20, 20), "blue": (20, 20, 230)}.items():
        inputs = InputBuffers(adapter, 10)
        assert inputs.add_joints(joint_msg(1_000))
        for stream in adapter.streams():
            inputs.add(stream.key, image_msg(1_000, colour))
        joints, samples = inputs.match(1_000, 0)
        observation = adapter.observation(joints, samples, None)
        image = observation.policy_input["image.wrist"]
        assert image.shape == (1, 3, 32, 32) and image.min() >= 0 and image.max() <= 1
        assert observation.policy_input["state"].shape == (1, 8)
        assert observation.jacobian.shape == (6, 7) and observation.ee_position.shape == (3,)
        result = steer(
            droid_policy,
            torch.zeros(15, 8),
            observation=observation.policy_input,
            method="base",
            generator=torch.Generator().manual_seed(0),
        )
        means[name] = float(result.chunk_real[0, :, :7].mean())
    assert means["red"] > 0.1 and means["blue"] < -0.1, means


def test_bad_images_and_joints_are_refused() -> None:
    adapter = make_adapter("droid")
    inputs = InputBuffers(adapter, 10)
    bad = image_msg(1, (1, 2, 3))
    bad.encoding = "16UC1"
    with pytest.raises(ObservationError, match="camera 'wrist'.*encoding"):
        inputs.add("wrist", bad)
    nan_joints = joint_msg(1)
    nan_joints.position[0] = float("nan")
    assert not inputs.add_joints(nan_joints)
    missing = JointState(name=ARM, position=[0.0] * 7)
    assert not inputs.add_joints(missing)
    with pytest.raises(ObservationError, match="nothing received on joint_states"):
        inputs.match(0, 0)


def test_match_waits_for_a_sample_in_flight() -> None:
    adapter = make_adapter("droid", {"cameras": ["wrist"], "image_topics": ["wrist/image_raw"]})
    inputs = InputBuffers(adapter, 10)
    inputs.add_joints(joint_msg(5_000_000))
    with pytest.raises(ObservationError, match="no wrist/image_raw within"):
        inputs.match(5_000_000, 1_000_000, wait_s=0.0)
    timer = threading.Timer(0.05, lambda: inputs.add("wrist", image_msg(5_000_100, (9, 9, 9))))
    timer.start()
    started = time.monotonic()
    joints, samples = inputs.match(0, 1_000_000, wait_s=2.0)
    assert time.monotonic() - started < 1.5
    assert joints.stamp_ns == 5_000_000 and samples["wrist"].stamp_ns == 5_000_100
    # A newer sample that does not match ends the wait at once: the match will not come.
    inputs.add_joints(joint_msg(9_000_000_000))
    inputs.add("wrist", image_msg(9_900_000_000, (9, 9, 9)))
    started = time.monotonic()
    with pytest.raises(ObservationError, match="no wrist/image_raw"):
        inputs.match(9_000_000_000, 1_000_000, wait_s=2.0)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(("image_tolerance", "matches"), [(0.1, True), (0.01, False)])
def test_cameras_match_within_their_own_tolerance(image_tolerance: float, matches: bool) -> None:
    """A 15 Hz camera next to 50 Hz joint states: the image 50 ms before the joints is used."""
    options = {"cameras": ["wrist"], "image_topics": ["wrist/image_raw"]}
    adapter = make_adapter("droid", {**options, "image_tolerance": image_tolerance})
    inputs = InputBuffers(adapter, 10)
    inputs.add("wrist", image_msg(1_000_000_000, (9, 9, 9)))
    inputs.add_joints(joint_msg(1_050_000_000))
    if matches:
        _, samples = inputs.match(0, 5_000_000)
        assert samples["wrist"].stamp_ns == 1_000_000_000
    else:
        with pytest.raises(ObservationError, match="no wrist/image_raw within 0.01 s"):
            inputs.match(0, 5_000_000)


def test_joint_velocity_reference_moves_the_ee_along_the_direction() -> None:
    kinematics = ArmKinematics()
    jacobian = kinematics.jacobian(REST_QPOS)
    spec = ActionSpec(horizon=15, dim=10, real_dims=tuple(range(8)))
    direction = np.array([0.6, -0.8, 0.0])
    proposal = CoarseProposal(
        Source.HUMAN, direction=direction, magnitude=1.0, gripper=Gripper.CLOSE
    )
    layout = JointVelocityLayout(max_speed=0.15, damping=1e-3)
    built = joint_velocity_reference(spec, layout, proposal, jacobian, commanded_rows=5)
    qdot = built.real[0, :7].double().numpy()
    ee_velocity = jacobian[:3] @ qdot
    np.testing.assert_allclose(ee_velocity, 0.15 * direction, atol=2e-3)
    assert built.real[0, 7] == 1.0  # close
    assert built.mask[:5, :8].all() and not built.mask[5:].any() and not built.mask[:, 8:].any()
    with pytest.raises(ValueError, match="jacobian"):
        joint_velocity_reference(spec, layout, proposal, jacobian[:, :6])


def test_layout_reference_from_a_coarse_message(droid_policy) -> None:  # noqa: ANN001
    from frs_steering.ros_messages import proposal_to_msg

    adapter = make_adapter("droid")
    adapter.bind(droid_policy)
    inputs = InputBuffers(adapter, 10)
    inputs.add_joints(joint_msg(1_000))
    for stream in adapter.streams():
        inputs.add(stream.key, image_msg(1_000, (100, 100, 100)))
    observation = adapter.observation(*inputs.match(1_000, 0), None)
    proposal = CoarseProposal(Source.HUMAN, direction=np.array([0.0, 0.0, 1.0]), magnitude=0.5)
    msg = proposal_to_msg(proposal, stamp=Time(), frame_id="fr3_link0", instruction="")
    settings = ReferenceSettings(action_space="joint_velocity", max_translation=0.01)
    built = adapter.layout.reference(droid_policy.spec, settings, msg, observation)
    ee_velocity = observation.jacobian[:3] @ built.real[0, :7].double().numpy()
    assert ee_velocity[2] > 0.05 and abs(ee_velocity[0]) < 0.02  # up at 0.5 * 0.15 m/s
    path = adapter.layout.translation_path(
        observation.ee_position, built.real, observation.jacobian
    )
    assert path.shape == (16, 3) and path[-1, 2] > path[0, 2]
    msg.header.frame_id = "world"
    with pytest.raises(ObservationError, match="frame_id"):
        adapter.layout.reference(droid_policy.spec, settings, msg, observation)


def test_step_monitor_throttles_feedback_and_stops_the_goal() -> None:
    sent: list[tuple[str, int, int]] = []
    now = [0.0]
    state = {"canceled": False, "current": True}
    monitor = StepMonitor(
        canceled=lambda: state["canceled"],
        current=lambda: state["current"],
        publish=lambda *args: sent.append(args),
        period=1.0,
        clock=lambda: now[0],
    )
    for step in range(10):
        monitor("reverse", step, 10)
    assert sent == []  # a call shorter than the period sends no feedback
    now[0] = 1.0
    monitor("reverse", 3, 10)
    assert sent == [("reverse", 4, 10)]  # the period elapsed
    for step in range(4, 10):
        monitor("reverse", step, 10)
    assert sent[1:] == [("reverse", 10, 10)]  # then a phase's end ...
    monitor("forward", 0, 10)
    assert sent[-1] == ("forward", 1, 10)  # ... and start at once
    monitor("forward", 1, 10)
    assert len(sent) == 3  # within the period
    now[0] = 2.5
    monitor("forward", 2, 10)
    assert sent[-1] == ("forward", 3, 10)
    every_step: list[tuple[str, int, int]] = []
    unthrottled = StepMonitor(
        canceled=lambda: False,
        current=lambda: True,
        publish=lambda *args: every_step.append(args),
        period=0.0,
        clock=lambda: now[0],
    )
    for step in range(5):
        unthrottled("reverse", step, 5)
    assert [s for _, s, _ in every_step] == [1, 2, 3, 4, 5]
    state["current"] = False
    with pytest.raises(GoalPreempted):
        monitor("forward", 1, 10)
    state["canceled"] = True
    with pytest.raises(GoalCanceled):
        monitor("forward", 2, 10)


def test_bound_output_clips_the_gripper_and_refuses_non_finite(droid_policy) -> None:  # noqa: ANN001
    observation = {"state": torch.zeros(1, 8)}
    observation.update(
        {f"image.{c}": torch.zeros(1, 3, 32, 32) for c in droid_policy.config.image_keys}
    )
    result = steer(droid_policy, torch.zeros(15, 8), observation=observation, method="base")
    raw = result.chunk_real.clone()
    raw[0, :, 7] = torch.linspace(-0.5, 1.5, 15)
    bounded = bound_output(type(result)(**{**result.__dict__, "chunk_real": raw}), 7)
    assert bounded.chunk_real[0, :, 7].min() == 0.0 and bounded.chunk_real[0, :, 7].max() == 1.0
    torch.testing.assert_close(bounded.chunk_real[0, :, :7], raw[0, :, :7])
    raw[0, 3, 2] = float("nan")
    with pytest.raises(ObservationError, match="non-finite"):
        bound_output(type(result)(**{**result.__dict__, "chunk_real": raw}), 7)


def test_samples_keep_their_stamp() -> None:
    sample = Sample(7, "value")
    assert sample.stamp_ns == 7 and sample.value == "value"


def test_references_beyond_the_policy_range_are_refused(droid_policy) -> None:  # noqa: ANN001
    from frs_steering.adapters.base import BuiltReference
    from frs_steering.steering_goals import GoalRejected, check_reference

    spec = droid_policy.spec
    inside = torch.zeros(15, 8)
    inside[:, :7] = 0.2  # rad/s, within the training range
    check_reference(spec, BuiltReference(inside, None, False, inside), 5.0)
    for value in (1e4, float("nan"), float("inf")):
        wild = inside.clone()
        wild[3, 2] = value
        with pytest.raises(GoalRejected, match="out of the policy's range|NaN or Inf"):
            check_reference(spec, BuiltReference(wild, None, False, wild), 5.0)
    normalized = torch.full((15, 8), 6.0)
    with pytest.raises(GoalRejected, match="exceeds max_normalized 5"):
        check_reference(spec, BuiltReference(normalized, None, True, None), 5.0)


def test_outputs_beyond_the_limit_fail(droid_policy) -> None:  # noqa: ANN001
    observation = {"state": torch.zeros(1, 8)}
    observation.update(
        {f"image.{c}": torch.zeros(1, 3, 32, 32) for c in droid_policy.config.image_keys}
    )
    result = steer(droid_policy, torch.zeros(15, 8), observation=observation, method="base")
    bound_output(result, 7, 5.0)  # a plain sample is in range
    wild = type(result)(**{**result.__dict__, "chunk": result.chunk * 1e3})
    with pytest.raises(ObservationError, match="out of range"):
        bound_output(wild, 7, 5.0)
