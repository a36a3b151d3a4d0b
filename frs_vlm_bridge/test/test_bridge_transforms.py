"""Static extrinsics: points from a sensor frame into the base frame."""

import numpy as np
import pytest

from frs_vlm_bridge.transforms import StaticTransform, quaternion_to_matrix

H = np.sqrt(0.5)


def test_ninety_degrees_about_z():
    camera_in_base = StaticTransform(translation=(1.0, 2.0, 0.5), quaternion_xyzw=(0, 0, H, H))
    np.testing.assert_allclose(camera_in_base.apply([1.0, 0.0, 0.0]), [1.0, 3.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(camera_in_base.apply([0.0, 1.0, 0.0]), [0.0, 2.0, 0.5], atol=1e-12)
    points = np.array([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])
    np.testing.assert_allclose(
        camera_in_base.apply(points), [[1.0, 2.0, 1.5], [1.0, 4.0, 0.5]], atol=1e-12
    )


def test_ninety_degrees_about_x_and_unnormalised_quaternion():
    rotation = quaternion_to_matrix((2 * H, 0, 0, 2 * H))  # normalised before use
    np.testing.assert_allclose(rotation @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(rotation), 1.0)


def test_invalid_parameters():
    with pytest.raises(ValueError, match="nonzero"):
        StaticTransform(translation=(0, 0, 0), quaternion_xyzw=(0, 0, 0, 0))
    with pytest.raises(ValueError, match="translation"):
        StaticTransform(translation=(0, 0))
    with pytest.raises(ValueError, match="shape"):
        StaticTransform(translation=(0, 0, 0)).apply([1, 2])
