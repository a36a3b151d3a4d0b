"""Observation adapters by name: the steering node and the bag replay load one by parameter.

``tabletop`` is the simulated tabletop's (46-d state from FK + cubes and mats, plus the EE velocity
for policies that read motion; MiniLM instruction; in ``frs_sim``), ``droid`` a DROID-style rig's
(two exterior cameras and a wrist camera, 7 joint positions + gripper, joint-velocity actions at 15
Hz), ``lerobot_droid`` the same rig for a LeRobot pi0 / pi0.5 checkpoint (the checkpoint's
preprocessor and tokenizer). Any other ``module:Class`` path names an adapter class of the user's;
nothing is imported until it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from frs_steering.adapters.base import (
    ActionLayout,
    BuiltReference,
    JointSample,
    ObservationAdapter,
    ObservationError,
    ReferenceSettings,
    Sample,
    StampedObservation,
    StreamSpec,
)

#: Registered adapter names -> ``module:Class``.
ADAPTERS: dict[str, str] = {
    "tabletop": "frs_sim.tabletop_adapter:TabletopAdapter",
    "droid": "frs_steering.adapters.droid:DroidAdapter",
    "lerobot_droid": "frs_steering.adapters.lerobot_droid:LeRobotDroidAdapter",
}


def adapter_class(name: str) -> type[ObservationAdapter]:
    """The adapter class registered as ``name`` (or at the ``module:Class`` path ``name``)."""
    path = ADAPTERS.get(name, name)
    module_name, _, class_name = path.partition(":")
    if not class_name:
        raise ValueError(f"unknown observation adapter {name!r}; registered: {sorted(ADAPTERS)}")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"observation adapter {name!r} ({path}) cannot be loaded: {error}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, ObservationAdapter)):
        raise ValueError(f"{path} is not an ObservationAdapter")
    return cls


def make_adapter(name: str, options: Mapping[str, Any] | None = None) -> ObservationAdapter:
    """An adapter instance of ``name`` with the given options (others at their defaults)."""
    return adapter_class(name)(options)


__all__ = [
    "ADAPTERS",
    "ActionLayout",
    "BuiltReference",
    "JointSample",
    "ObservationAdapter",
    "ObservationError",
    "ReferenceSettings",
    "Sample",
    "StampedObservation",
    "StreamSpec",
    "adapter_class",
    "make_adapter",
]
