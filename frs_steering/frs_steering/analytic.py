"""A flow policy with a closed-form velocity: isotropic Gaussian mixture data.

For the straight path ``x_t = alpha(t) * action + beta(t) * noise`` and data
``sum_k w_k N(mu_k, sigma_k^2 I)``, the marginal velocity ``E[d x_t/dt | x_t = x]`` is a
posterior-weighted sum of per-component Gaussian posteriors, exact for either time convention.
It lets tests and the GMM table check integration and steering against ground truth; with one
component it is the affine Gaussian-to-Gaussian flow.
"""

from __future__ import annotations

import math

import torch

from frs_steering.policy import ActionSpec, Observation, TimeConvention


class GaussianMixturePolicy:
    """Exact flow policy for an isotropic Gaussian mixture over ``[horizon, dim]`` chunks.

    The observation is ignored (the cache is empty) but ``encode`` calls are counted in
    ``encode_calls`` so tests can check that steering encodes once. Velocities are computed in
    float64 and returned in the input dtype.
    """

    def __init__(
        self,
        means: torch.Tensor,
        stds: torch.Tensor | float,
        weights: torch.Tensor | None = None,
        *,
        convention: TimeConvention = TimeConvention.NOISE_AT_ONE,
        num_steps: int = 10,
    ) -> None:
        if means.ndim != 3:
            raise ValueError(f"means must be [modes, horizon, dim], got {tuple(means.shape)}")
        modes = means.shape[0]
        self.means = means.detach().to(torch.float64).reshape(modes, -1)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(modes).clone()
        if weights is None:
            weights = torch.full((modes,), 1.0 / modes, dtype=torch.float64)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.weights.shape != (modes,) or (self.weights <= 0).any():
            raise ValueError("weights must be positive, one per mode")
        self.weights = self.weights / self.weights.sum()
        if (self.stds <= 0).any():
            raise ValueError("stds must be positive")
        self._spec = ActionSpec(
            horizon=means.shape[1], dim=means.shape[2], convention=convention, num_steps=num_steps
        )
        self.encode_calls = 0

    @property
    def spec(self) -> ActionSpec:
        return self._spec

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]

    def encode(self, observation: Observation) -> None:
        self.encode_calls += 1
        return None

    def repeat_cache(self, cache: None, repeats: int) -> None:
        return cache

    def _path(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """alpha, beta (per sample) and their constant time derivatives."""
        if self._spec.convention is TimeConvention.NOISE_AT_ZERO:
            return t, 1.0 - t, 1.0, -1.0
        return 1.0 - t, t, -1.0, 1.0

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cache: None = None) -> torch.Tensor:
        if tuple(x.shape[1:]) != self._spec.chunk_shape or t.shape != x.shape[:1]:
            raise ValueError(
                f"x must be [B, *{self._spec.chunk_shape}] and t [B], got {tuple(x.shape)} "
                f"and {tuple(t.shape)}"
            )
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        alpha, beta, d_alpha, d_beta = self._path(t.to(torch.float64))
        alpha, beta = alpha[:, None], beta[:, None]
        variance = alpha**2 * self.stds**2 + beta**2  # [B, K]
        offset = flat[:, None, :] - alpha[:, :, None] * self.means  # [B, K, d]
        dims = flat.shape[1]
        logits = (
            self.weights.log()
            - 0.5 * dims * variance.log()
            - 0.5 * offset.pow(2).sum(-1) / variance
        )
        posterior = logits.softmax(dim=1)  # [B, K]
        # Per component: E[action | x] = mu + alpha sigma^2 / var * offset, E[noise | x] =
        # beta / var * offset; the velocity is d_alpha E[action] + d_beta E[noise].
        gain = (d_alpha * alpha * self.stds**2 + d_beta * beta) / variance  # [B, K]
        per_mode = d_alpha * self.means + gain[:, :, None] * offset
        velocity = (posterior[:, :, None] * per_mode).sum(1)
        return velocity.reshape(x.shape).to(x.dtype)

    def log_prob(self, chunks: torch.Tensor) -> torch.Tensor:
        """Data log-density of ``[B, horizon, dim]`` chunks, ``[B]``."""
        flat = chunks.reshape(chunks.shape[0], -1).to(torch.float64)
        dims = flat.shape[1]
        sq = (flat[:, None, :] - self.means).pow(2).sum(-1)
        var = self.stds**2
        log_normal = -0.5 * dims * (math.log(2 * math.pi) + var.log()) - 0.5 * sq / var
        return torch.logsumexp(self.weights.log() + log_normal, dim=1)

    def nearest_mode(self, chunks: torch.Tensor) -> torch.Tensor:
        """Index of the closest mode mean (Euclidean), ``[B]``."""
        flat = chunks.reshape(chunks.shape[0], -1).to(torch.float64)
        return torch.cdist(flat, self.means).argmin(dim=1)

    def sample_data(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` chunks drawn from the data distribution (float32)."""
        modes = torch.multinomial(self.weights, count, replacement=True, generator=generator)
        noise = torch.randn(count, self.means.shape[1], generator=generator, dtype=torch.float64)
        flat = self.means[modes] + self.stds[modes, None] * noise
        return flat.reshape(count, *self._spec.chunk_shape).to(torch.float32)


def coarse_references(
    policy: GaussianMixturePolicy,
    count: int,
    spread: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Off-support references: a random mode mean plus N(0, spread^2) on every element.

    Returns ``[count, horizon, dim]`` float32 references and the ``[count]`` source modes.
    """
    modes = torch.multinomial(policy.weights, count, replacement=True, generator=generator)
    shape = (count, *policy.spec.chunk_shape)
    offsets = spread * torch.randn(shape, generator=generator, dtype=torch.float64)
    references = policy.means[modes].reshape(shape) + offsets
    return references.to(torch.float32), modes


def steering_outcomes(
    policy: GaussianMixturePolicy,
    references: torch.Tensor,
    source_modes: torch.Tensor,
    chunks: torch.Tensor,
) -> dict[str, float]:
    """Rates that say whether steered ``chunks`` kept the references' intent and became precise.

    * ``same_mode``: nearest mode of the chunk is the reference's source mode (chance is about
      1 / num_modes);
    * ``density_rises``: data log-density of the chunk exceeds the reference's;
    * ``on_support``: chunk lies within ``2 * std * sqrt(d)`` of some mode mean (in distribution);
    * ``rms_to_reference``: mean RMS distance between chunk and reference.
    """
    flat = chunks.reshape(chunks.shape[0], -1).to(torch.float64)
    nearest = torch.cdist(flat, policy.means)
    radius = 2.0 * policy.stds * math.sqrt(flat.shape[1])
    rms = (chunks - references).reshape(chunks.shape[0], -1).pow(2).mean(1).sqrt()
    return {
        "same_mode": (nearest.argmin(1) == source_modes).double().mean().item(),
        "density_rises": (policy.log_prob(chunks) > policy.log_prob(references))
        .double()
        .mean()
        .item(),
        "on_support": (nearest < radius).any(1).double().mean().item(),
        "rms_to_reference": rms.double().mean().item(),
    }


def example_mixture(
    seed: int = 0,
    *,
    convention: TimeConvention = TimeConvention.NOISE_AT_ONE,
    num_steps: int = 10,
    num_modes: int = 4,
    horizon: int = 5,
    dim: int = 2,
    std: float = 0.1,
) -> GaussianMixturePolicy:
    """The mixture behind the README table: precise modes (std 0.1), means ~ N(0, I)."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(num_modes, horizon, dim, generator=generator)
    return GaussianMixturePolicy(means, std, convention=convention, num_steps=num_steps)
