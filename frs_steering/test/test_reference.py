"""Coarse Cartesian proposals become correct reference chunks and masks in the policy's space."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frs_steering.normalization import QuantileNormalizer
from frs_steering.policy import ActionSpec
from frs_steering.reasoning import CoarseProposal, Gripper, Source, defer
from frs_steering.reference import CartesianLayout, cartesian_reference

SPEC = ActionSpec(
    horizon=10,
    dim=8,
    real_dims=tuple(range(7)),
    normalizer=QuantileNormalizer(q01=(-0.05,) * 6 + (0.0,), q99=(0.05,) * 6 + (1.0,)),
)
LAYOUT = CartesianLayout()


def _proposal(direction=(0.0, 0.0, 0.0), **kwargs) -> CoarseProposal:
    return CoarseProposal(source=Source.SCRIPTED, direction=np.asarray(direction), **kwargs)


def test_translation_rows_and_mask() -> None:
    direction = np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0)
    ref = cartesian_reference(
        SPEC, LAYOUT, _proposal(direction, magnitude=0.5), current_gripper=0.3
    )
    assert ref.chunk.shape == ref.mask.shape == (10, 8)
    expected = torch.tensor(direction * 0.5 * LAYOUT.max_translation, dtype=torch.float32)
    assert torch.allclose(ref.real[:, :3], expected.expand(10, 3))
    assert torch.all(ref.real[:, 3:6] == 0)
    assert torch.allclose(ref.real[:, 6], torch.full((10,), 0.3))
    # Only translation is commanded: rotation, a kept gripper and padding are the policy's.
    assert ref.mask[:, :3].all() and not ref.mask[:, 3:].any()
    # The chunk is the real reference, normalized and padded with the normalized zero.
    assert torch.allclose(SPEC.from_policy(ref.chunk), ref.real, atol=1e-6)
    assert torch.all(ref.chunk[:, 7] == 0)


def test_gripper_intent_and_rows_are_commanded() -> None:
    ref = cartesian_reference(SPEC, LAYOUT, _proposal(gripper=Gripper.CLOSE), commanded_rows=4)
    assert torch.all(ref.real[:, 6] == LAYOUT.gripper_closed)
    assert ref.mask[:4, 6].all() and not ref.mask[4:].any()
    assert ref.mask[:4, :3].all()
    rotation = cartesian_reference(SPEC, LAYOUT, _proposal(), command_rotation=True)
    assert rotation.mask[:, 3:6].all()


def test_bad_requests_raise() -> None:
    with pytest.raises(ValueError, match="deferring"):
        cartesian_reference(SPEC, LAYOUT, defer("close to the cube", Source.SCRIPTED))
    with pytest.raises(ValueError, match="commanded_rows"):
        cartesian_reference(SPEC, LAYOUT, _proposal(), commanded_rows=11)
    with pytest.raises(ValueError, match="no gripper"):
        cartesian_reference(SPEC, CartesianLayout(gripper=None), _proposal(gripper=Gripper.OPEN))
    with pytest.raises(ValueError, match="max_translation"):
        CartesianLayout(max_translation=0.0)
