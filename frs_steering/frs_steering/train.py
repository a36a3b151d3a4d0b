"""Flow-matching training for any ``nn.Module`` that implements the flow-policy contract."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from frs_steering.policy import FlowPolicy, Observation, TimeConvention

#: How training draws flow times. ``uniform``: uniform on [0, 1) (rectified flow). ``beta``:
#: pi0's (openpi, LeRobot): the share of noise in the interpolant is Beta(1.5, 1) on
#: [0.001, 1], so training dwells on the noisy end, where the integration picks the mode.
TIME_SAMPLINGS = ("uniform", "beta")


@contextmanager
def flushing_denormals() -> Iterator[None]:
    """Treat subnormal floats as zero on this thread while training on the CPU.

    Adam's second moments of near-silent units underflow into subnormals, which x86 cores
    handle several times slower: reference cloning on a push's rollouts ran 2.5x slower per
    step with them and DSRL 1.3x, for the same weights to the bit (the generalist's training
    showed no difference). The default (off) is restored on exit.
    """
    flushed = torch.set_flush_denormal(True)  # False where the CPU cannot
    try:
        yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def check_time_sampling(time_sampling: str) -> None:
    """Refuse a time sampling that is not one of ``TIME_SAMPLINGS``."""
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")


def sample_flow_times(
    count: int,
    convention: TimeConvention,
    time_sampling: str = "uniform",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``count`` training times in ``convention`` drawn as ``time_sampling`` says (one uniform
    draw each either way, so the generator advances alike)."""
    check_time_sampling(time_sampling)
    u = torch.rand(count, generator=generator, dtype=dtype)
    if time_sampling == "uniform":
        return u
    noise_level = u.pow(1.0 / 1.5) * 0.999 + 0.001  # Beta(1.5, 1) has CDF x ** 1.5: invert it
    return convention.time_at_noise_level(noise_level)


def flow_matching_loss(
    policy: FlowPolicy,
    observation: Observation,
    chunks: torch.Tensor,
    generator: torch.Generator | None = None,
    time_sampling: str = "uniform",
) -> torch.Tensor:
    """Mean squared error between predicted and straight-path velocity at random times
    (``TIME_SAMPLINGS``).

    ``chunks`` are normalized, padded ``[B, horizon, dim]``; the path and its target follow the
    policy's time convention.
    """
    convention = policy.spec.convention
    noise = torch.randn(chunks.shape, generator=generator, dtype=chunks.dtype)
    t = sample_flow_times(chunks.shape[0], convention, time_sampling, generator, chunks.dtype)
    x_t = convention.interpolate(noise, chunks, t)
    target = convention.velocity_target(noise, chunks)
    predicted = policy.velocity(x_t, t, policy.encode(observation))
    return (predicted - target).pow(2).mean()


def _check_data(observations: Observation, actions: torch.Tensor) -> int:
    if not torch.isfinite(actions).all():
        raise ValueError("actions contain NaN or Inf")
    count = actions.shape[0]
    if count == 0:
        raise ValueError("no training examples")
    for key, value in observations.items():
        if not isinstance(value, torch.Tensor) or value.shape[:1] != (count,):
            raise ValueError(
                f"observations[{key!r}] must be a tensor with {count} rows like actions, got "
                f"{getattr(value, 'shape', type(value))}"
            )
    return count


def check_training_options(
    steps: int,
    batch_size: int,
    learning_rate: float,
    instruction_dropout: float = 0.0,
    time_sampling: str = "uniform",
    instruction_noise: float = 0.0,
    instruction_noise_share: float = 1.0,
) -> None:
    """Refuse options no flow-matching training can run with (ValueError naming the option);
    callers that prepare data first check here before spending time on it."""
    check_time_sampling(time_sampling)
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be positive and finite, got {learning_rate}")
    if not 0.0 <= instruction_dropout < 1.0:  # also refuses NaN
        raise ValueError(f"instruction_dropout must be in [0, 1), got {instruction_dropout}")
    if not (math.isfinite(instruction_noise) and instruction_noise >= 0):
        raise ValueError(f"instruction_noise must be >= 0 and finite, got {instruction_noise}")
    if not 0.0 < instruction_noise_share <= 1.0:  # also refuses NaN
        raise ValueError(
            f"instruction_noise_share must be in (0, 1], got {instruction_noise_share}"
        )


def train_flow_policy(
    policy: nn.Module,
    observations: Observation,
    actions: torch.Tensor,
    *,
    steps: int = 2000,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    warmup_steps: int = 50,
    grad_clip: float = 1.0,
    seed: int = 0,
    actions_normalized: bool = False,
    instruction_dropout: float = 0.0,
    time_sampling: str = "uniform",
    instruction_noise: float = 0.0,
    instruction_noise_share: float = 1.0,
    progress: bool = True,
) -> list[float]:
    """Train ``policy`` in place by flow matching; returns the per-step loss history.

    ``observations`` holds ``[N, ...]`` tensors (e.g. ``state``, ``instruction``); ``actions``
    are ``[N, horizon, num_real]`` real-unit chunks (or ``[N, horizon, dim]`` normalized with
    ``actions_normalized``). AdamW with linear warmup and cosine decay; batches, noise and
    times come from one generator seeded with ``seed``, so CPU runs repeat exactly.

    ``instruction_dropout``: the share of samples per batch whose ``instruction`` is replaced by
    the zero vector, the input a policy reads when an observation carries no instruction; the
    policy then also learns its instruction-free behaviour (classifier-free-guidance style).
    ``time_sampling``: how flow times are drawn (``TIME_SAMPLINGS``).
    ``instruction_noise``: the standard deviation of Gaussian noise added to every element of
    each sampled ``instruction`` (its own units), so the policy meets instructions off the
    training texts, as unseen phrasings are. ``instruction_noise_share``: the share of each
    batch's samples that get it; the others keep their exact training text.
    """
    check_training_options(
        steps,
        batch_size,
        learning_rate,
        instruction_dropout,
        time_sampling,
        instruction_noise,
        instruction_noise_share,
    )
    if (instruction_dropout or instruction_noise) and "instruction" not in observations:
        raise ValueError("instruction dropout / noise need observations with an 'instruction'")
    spec = policy.spec
    count = _check_data(observations, actions)
    with torch.no_grad():
        chunks = actions.float() if actions_normalized else spec.to_policy(actions.float())
    if tuple(chunks.shape[1:]) != spec.chunk_shape:
        raise ValueError(f"normalized actions must be [N, *{spec.chunk_shape}], got {chunks.shape}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=learning_rate, weight_decay=weight_decay)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress_ratio = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress_ratio))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    policy.train()
    history: list[float] = []
    bar = tqdm(range(steps), desc="flow matching", disable=not progress, leave=False)
    for _ in bar:
        index = torch.randint(count, (min(batch_size, count),), generator=generator)
        batch_obs = {key: value[index] for key, value in observations.items()}
        if instruction_noise:  # no draw otherwise: runs without noise repeat exactly
            text = batch_obs["instruction"]
            jitter = torch.randn(text.shape, generator=generator, dtype=text.dtype)
            if instruction_noise_share < 1.0:  # no draw at 1: earlier runs repeat exactly
                noisy = torch.rand(len(index), generator=generator) < instruction_noise_share
                jitter = jitter * noisy.unsqueeze(1)
            batch_obs["instruction"] = text + instruction_noise * jitter
        if instruction_dropout:  # likewise; a withheld instruction stays the exact zero vector
            keep = torch.rand(len(index), generator=generator) >= instruction_dropout
            batch_obs["instruction"] = batch_obs["instruction"] * keep.unsqueeze(1)
        loss = flow_matching_loss(policy, batch_obs, chunks[index], generator, time_sampling)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        history.append(loss.item())
        if progress and len(history) % 20 == 0:
            bar.set_postfix(loss=f"{sum(history[-20:]) / 20:.4f}")
    policy.eval()
    return history
