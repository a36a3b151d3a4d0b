"""frs_steering: Flow Reversal Steering for flow-matching robot policies.

Pure-Python core (no ROS imports), one concept per module; import what you need from them:

- ``policy``: the ``FlowPolicy`` protocol, ``ActionSpec`` and ``TimeConvention``.
- ``normalization``: mean/std and quantile maps between real units and policy space.
- ``integrate``: stateless forward/reverse ODE integration (Euler, midpoint, Heun, RK4).
- ``steer``: ``steer()`` with FRS and its baselines, and the method registry.
- ``model`` / ``train`` / ``checkpoint``: the built-in flow-matching policy, its training,
  and safetensors checkpoints.
- ``analytic``: an exact Gaussian-mixture flow policy for tests and studies.

This file stays import-free so that ``import frs_steering`` is instant.
"""

__version__ = "0.1.0"
