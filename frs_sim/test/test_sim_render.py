"""Offscreen rendering (EGL): right shape, not blank; skipped cleanly where EGL is missing."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from frs_sim import scene
from frs_sim.env import EnvConfig, FrankaTabletopEnv


def _stub_embed(text: str) -> np.ndarray:
    return np.zeros(384, dtype=np.float32)


@pytest.fixture(scope="module")
def rendering_env() -> FrankaTabletopEnv:
    config = EnvConfig(image_obs=True, image_width=96, image_height=64)
    environment = FrankaTabletopEnv(config=config, render_mode="rgb_array", embed_fn=_stub_embed)
    try:
        environment.reset(seed=0)
    except Exception as exc:  # no EGL / GL context on this machine
        environment.close()
        pytest.skip(f"offscreen rendering unavailable: {exc!r}")
    yield environment
    environment.close()


def test_rendered_frame_shape_and_content(rendering_env: FrankaTabletopEnv) -> None:
    obs, _ = rendering_env.reset(seed=0)
    image = obs["image"]
    assert image.shape == (64, 96, 3) and image.dtype == np.uint8
    assert image.std() > 5.0  # not a blank frame
    frame = rendering_env.render()
    np.testing.assert_array_equal(frame, image)
    top = rendering_env.render_camera("top")
    assert top.shape == (64, 96, 3) and not np.array_equal(top, image)


def test_red_cube_visible_from_top(rendering_env: FrankaTabletopEnv) -> None:
    rendering_env.reset(seed=0)
    top = rendering_env.render_camera("top").astype(int)
    red = (top[..., 0] > 150) & (top[..., 1] < 80) & (top[..., 2] < 80)
    assert red.sum() > 3


def test_wrist_camera_moves_with_the_hand(rendering_env: FrankaTabletopEnv) -> None:
    rendering_env.reset(seed=0)
    wrist = rendering_env.render_camera("wrist")
    assert wrist.shape == (64, 96, 3) and wrist.std() > 5.0
    assert not np.array_equal(wrist, rendering_env.render_camera("front"))
    for _ in range(3):  # lower the hand ~10 cm: the view from the hand changes
        rendering_env.step(np.array([0.0, 0.0, -0.035, 0.0, 0.0, 0.0, 0.0, 0.0]))
    moved = rendering_env.render_camera("wrist")
    assert np.abs(moved.astype(int) - wrist.astype(int)).mean() > 5.0


def test_wrist_camera_changes_no_physics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same bodies, geoms and joints, bit-identical dynamics with and without the camera."""
    with_camera = scene.build_model()
    monkeypatch.setattr(scene, "_add_wrist_camera", lambda spec: None)
    without = scene.build_model()
    assert (with_camera.ncam, without.ncam) == (3, 2)
    for size in ("nbody", "ngeom", "nq", "nv", "nu", "nsite"):
        assert getattr(with_camera, size) == getattr(without, size), size
    rng = np.random.default_rng(0)
    ctrl = rng.uniform(without.actuator_ctrlrange[:, 0], without.actuator_ctrlrange[:, 1])
    paths = []
    for model in (with_camera, without):
        data = mujoco.MjData(model)
        data.ctrl[:] = ctrl
        path = []
        for _ in range(200):
            mujoco.mj_step(model, data)
            path.append(data.qpos.copy())
        paths.append(np.array(path))
    np.testing.assert_array_equal(paths[0], paths[1])
