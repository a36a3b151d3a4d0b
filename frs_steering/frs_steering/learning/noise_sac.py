"""DSRL: soft actor-critic whose action is a frozen flow policy's noise, optionally seeded by FRS.

The actor is a :class:`~frs_steering.learning.noise_policy.NoisePolicy` (bounded ``bound * tanh``
Gaussian over the noise of the dims it predicts, one vector per chunk by default), so a
trained actor deploys exactly like a DSBC policy (``noise_policy`` steering method). Twin Q
critics read the actor's standardized observation features and the action scaled to [-1, 1];
the temperature is tuned toward a target entropy.

**DSRL + FRS** adds two things, both from FRS rollouts: the replay buffer starts prefilled
with their transitions, and the actor loss gets a behaviour-cloning term
``bc_weight * ||mean action - FRS noise||^2`` on transitions of *successful* FRS episodes.
With self-imitation (:meth:`DsrlAgent.add_bc_data`) the agent's own successful training
episodes join that BC set as they happen (for plain DSRL they are all of it).

Environment-free: the simulation loop lives in :mod:`frs_sim.studies.dsrl`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from frs_steering.learning.noise_data import NoiseDataset
from frs_steering.learning.noise_policy import NoisePolicy


@dataclass(frozen=True)
class SacConfig:
    """SAC hyper-parameters (defaults suit sparse-reward chunked episodes of ~15 steps)."""

    hidden: int = 256
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    gamma: float = 0.95
    tau: float = 0.01
    batch_size: int = 256
    initial_alpha: float = 0.01
    initial_log_std: float = -2.0  # pre-squash: start by exploring near the actor's mean
    target_entropy_per_dim: float = -1.0
    bc_weight: float = 0.0  # > 0: DSRL + FRS behaviour-cloning term
    bc_batch_size: int = 128
    layer_norm: bool = True  # LayerNorm in the critics: curbs Q over-estimation off the data
    backup_entropy: bool = False  # entropy bonus in the TD target (off: with 10-30 noise dims
    # it outweighs a sparse reward of 1 and every Q drifts to the same value)
    q_bounds: tuple[float, float] | None = (0.0, 1.0)  # TD targets clipped to what the reward
    # allows (sparse success reward 1 that ends the episode: 0 <= Q <= 1); None = no clipping
    prefill_fraction: float = 0.5  # share of each batch from the prefilled (FRS) buffer
    critic_ensemble: int = 1  # 1: one twin-headed critic; > 1: that many independent critics,
    # TD targets from the min over a random pair and the actor following their mean (RLPD)
    anchor_weight: float = 0.0  # > 0: trust region around the starting actor (e.g. DSBC) on
    # every batch state: ``anchor_weight * relu(|mean action - start's| - anchor_radius)^2``
    anchor_radius: float = 0.0  # noise units each element may move freely (0: a plain L2 pull)

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma < 1.0 or not 0.0 < self.tau <= 1.0:
            raise ValueError("need 0 < gamma < 1 and 0 < tau <= 1")
        if self.bc_weight < 0 or self.initial_alpha <= 0 or self.anchor_weight < 0:
            raise ValueError("bc_weight and anchor_weight must be >= 0 and initial_alpha > 0")
        if self.critic_ensemble < 1 or self.anchor_radius < 0:
            raise ValueError("critic_ensemble must be >= 1 and anchor_radius >= 0")


class ReplayBuffer:
    """Fixed-capacity FIFO of (features, action, reward, next features, done) as arrays."""

    def __init__(self, feature_dim: int, action_dim: int, capacity: int) -> None:
        self.capacity = capacity
        self.features = np.zeros((capacity, feature_dim), np.float32)
        self.actions = np.zeros((capacity, action_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.next_features = np.zeros((capacity, feature_dim), np.float32)
        self.dones = np.zeros(capacity, np.float32)
        self.size = 0
        self._next = 0

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        features: np.ndarray,
        action: np.ndarray,
        reward: float,
        next_features: np.ndarray,
        done: bool,
    ) -> None:
        i = self._next
        self.features[i], self.actions[i], self.rewards[i] = features, action, reward
        self.next_features[i], self.dones[i] = next_features, float(done)
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = torch.randint(self.size, (batch_size,), generator=generator).numpy()
        return {
            "features": torch.from_numpy(self.features[index]),
            "actions": torch.from_numpy(self.actions[index]),
            "rewards": torch.from_numpy(self.rewards[index]),
            "next_features": torch.from_numpy(self.next_features[index]),
            "dones": torch.from_numpy(self.dones[index]),
        }


def flat_features(observation: Mapping[str, np.ndarray | torch.Tensor], keys) -> np.ndarray:
    """One float32 vector from an unbatched observation, in ``keys`` order."""
    return np.concatenate([np.asarray(observation[k], np.float32).reshape(-1) for k in keys])


def frs_transitions(
    data: NoiseDataset, actor: NoisePolicy
) -> tuple[list[tuple], np.ndarray, np.ndarray]:
    """Replay transitions from FRS rollouts, plus (features, action) pairs of successful ones.

    Chunks of one episode are consecutive in ``data``; an episode's last chunk ends it with
    reward 1 if it succeeded, and is dropped if it failed (a timeout has no next observation
    to bootstrap from). Actions are the noises in the actor's layout (its predicted dims,
    chunk-averaged or full), clipped inside its bound.
    """
    features = actor.flatten(data.observations, standardize=False).numpy()
    actions = actor.target_of(data.noise.float()).numpy()
    episode, success = data.episode.numpy(), data.success.numpy()
    transitions = []
    for i in range(len(data)):
        last = i + 1 == len(data) or episode[i + 1] != episode[i]
        if last and not success[i]:
            continue
        next_features = features[i] if last else features[i + 1]
        transitions.append((features[i], actions[i], float(last), next_features, last))
    good = success.astype(bool)
    return transitions, features[good], actions[good]


def sample_mixed(
    online: ReplayBuffer,
    prefill: ReplayBuffer | None,
    batch_size: int,
    prefill_fraction: float,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """A batch drawn ``prefill_fraction`` from ``prefill`` and the rest from ``online``
    (symmetric sampling as in RLPD); whichever buffer is empty gives way to the other."""
    from_prefill = 0
    if prefill is not None and len(prefill):
        from_prefill = batch_size if not len(online) else round(batch_size * prefill_fraction)
    parts = []
    if from_prefill:
        parts.append(prefill.sample(from_prefill, generator))
    if batch_size - from_prefill:
        parts.append(online.sample(batch_size - from_prefill, generator))
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


class _Critic(nn.Module):
    """Q estimates, one column per head: a twin-headed network (``networks == 1``) or an
    ensemble of independent single-head networks."""

    def __init__(
        self, feature_dim: int, action_dim: int, hidden: int, layer_norm: bool, networks: int = 1
    ) -> None:
        super().__init__()

        def norm() -> nn.Module:
            return nn.LayerNorm(hidden) if layer_norm else nn.Identity()

        heads = 2 if networks == 1 else 1
        self.nets = nn.ModuleList(
            nn.Sequential(
                nn.Linear(feature_dim + action_dim, hidden),
                norm(),
                nn.SiLU(),
                nn.Linear(hidden, hidden),
                norm(),
                nn.SiLU(),
                nn.Linear(hidden, heads),
            )
            for _ in range(networks)
        )

    def forward(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([features, action], dim=1)
        return torch.cat([net(inputs) for net in self.nets], dim=1)


class DsrlAgent:
    """SAC over the noise space of a flow policy (the actor is a :class:`NoisePolicy`)."""

    def __init__(self, actor: NoisePolicy, config: SacConfig = SacConfig(), seed: int = 0):
        torch.manual_seed(seed)
        self.config = config
        self.actor = actor
        self.keys = list(actor.config.observation_dims)
        self.bound = actor.config.bound
        feature_dim = sum(actor.config.observation_dims.values())
        self.action_dim = actor.config.output_dim
        # Start exploring near the mean: with a fresh head (std ~ 1 before the squash) the noise
        # spans the whole bound, nearly every training episode fails and the critic sees
        # only failures (measured: 0-30% training success while the mean actor scored 50-80%).
        with torch.no_grad():
            actor.log_std_head.weight.mul_(0.01)
            actor.log_std_head.bias.fill_(config.initial_log_std)
        self.critic = _Critic(
            feature_dim, self.action_dim, config.hidden, config.layer_norm, config.critic_ensemble
        )
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(config.initial_alpha), requires_grad=True)
        self.target_entropy = config.target_entropy_per_dim * self.action_dim
        self.actor_optimizer = torch.optim.Adam(actor.parameters(), lr=config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.bc_features: torch.Tensor | None = None
        self.bc_actions: torch.Tensor | None = None
        # the trust region's centre: the actor as it was handed over (e.g. a DSBC policy)
        self.anchor = (
            copy.deepcopy(actor).requires_grad_(False) if config.anchor_weight > 0 else None
        )

    # ---------------------------------------------------------------- acting
    def _sample(self, std_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized action in [-bound, bound] and its log-probability."""
        mean, log_std = self.actor.head(std_features)
        eps = torch.randn(mean.shape, generator=self.generator)
        pre = mean + log_std.exp() * eps
        squashed = torch.tanh(pre)
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(1)
        log_prob = log_prob - (torch.log(self.bound * (1 - squashed.pow(2)) + 1e-6)).sum(1)
        return self.bound * squashed, log_prob

    @torch.no_grad()
    def act(self, features: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Noise vector for one observation's flat features."""
        std = self.actor.standardize(torch.from_numpy(features).float().unsqueeze(0))
        if deterministic:
            mean, _ = self.actor.head(std)
            return (self.bound * torch.tanh(mean))[0].numpy()
        return self._sample(std)[0][0].numpy()

    # ---------------------------------------------------------------- learning
    def _pessimistic(self, q: torch.Tensor) -> torch.Tensor:
        """The TD target's Q: min over the twin heads, or over a random pair of the ensemble."""
        if q.shape[1] > 2:
            pair = torch.randperm(q.shape[1], generator=self.generator)[:2]
            q = q[:, pair]
        return q.min(1).values

    def set_bc_data(self, features: np.ndarray, actions: np.ndarray) -> None:
        """(features, action) pairs the BC term pulls the actor toward (DSRL + FRS)."""
        if len(features):
            self.bc_features = torch.from_numpy(np.asarray(features, np.float32))
            self.bc_actions = torch.from_numpy(np.asarray(actions, np.float32))

    def add_bc_data(self, features: np.ndarray, actions: np.ndarray) -> None:
        """Add pairs to the BC set: self-imitation of the agent's own successful episodes."""
        if self.bc_features is None:
            self.set_bc_data(features, actions)
        elif len(features):
            self.bc_features = torch.cat(
                [self.bc_features, torch.from_numpy(np.asarray(features, np.float32))]
            )
            self.bc_actions = torch.cat(
                [self.bc_actions, torch.from_numpy(np.asarray(actions, np.float32))]
            )

    def bc_size(self) -> int:
        """How many (features, action) pairs the BC term draws from."""
        return 0 if self.bc_features is None else len(self.bc_features)

    def update(
        self, batch: Mapping[str, torch.Tensor], actor_from_critic: bool = True
    ) -> dict[str, float]:
        """One critic, actor and temperature step; returns the losses.

        ``actor_from_critic`` False: the actor learns from the BC term alone (pretraining,
        while the critic is still being fitted and its gradient would only mislead it).
        """
        config = self.config
        features = self.actor.standardize(batch["features"])
        next_features = self.actor.standardize(batch["next_features"])
        scale = 1.0 / self.bound
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_action, next_log_prob = self._sample(next_features)
            next_q = self._pessimistic(self.target_critic(next_features, next_action * scale))
            if config.backup_entropy:
                next_q = next_q - alpha * next_log_prob
            target = batch["rewards"] + config.gamma * (1 - batch["dones"]) * next_q
            if config.q_bounds is not None:
                target = target.clamp(*config.q_bounds)
        q = self.critic(features, batch["actions"] * scale)
        critic_loss = (q - target.unsqueeze(1)).pow(2).mean()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        action, log_prob = self._sample(features)
        q_pi = self.critic(features, action * scale)
        # twin heads: the min (TD3/SAC); an ensemble: its mean, pessimism lives in the targets
        q_pi = q_pi.min(1).values if config.critic_ensemble == 1 else q_pi.mean(1)
        actor_loss = (alpha * log_prob - q_pi).mean() if actor_from_critic else torch.zeros(())
        anchor_loss = torch.zeros(())
        if self.anchor is not None:
            mean, _ = self.actor.head(features)
            with torch.no_grad():
                anchor_mean, _ = self.anchor.head(self.anchor.standardize(batch["features"]))
            gap = self.bound * (torch.tanh(mean) - torch.tanh(anchor_mean)).abs()
            anchor_loss = (gap - config.anchor_radius).clamp(min=0).pow(2).mean()
            actor_loss = actor_loss + config.anchor_weight * anchor_loss
        bc_loss = torch.zeros(())
        if config.bc_weight > 0 and self.bc_features is not None:
            index = torch.randint(
                len(self.bc_features), (config.bc_batch_size,), generator=self.generator
            )
            mean, _ = self.actor.head(self.actor.standardize(self.bc_features[index]))
            bc_loss = (self.bound * torch.tanh(mean) - self.bc_actions[index]).pow(2).mean()
            actor_loss = actor_loss + config.bc_weight * bc_loss
        if actor_loss.requires_grad:  # else nothing pulls the actor (no critic, no BC data)
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optimizer.step()

        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optimizer.step()

        with torch.no_grad():
            for target_p, p in zip(
                self.target_critic.parameters(), self.critic.parameters(), strict=True
            ):
                target_p.lerp_(p, config.tau)
        return {
            "critic_loss": critic_loss.item(),
            "actor_loss": actor_loss.item(),
            "bc_loss": bc_loss.item(),
            "anchor_loss": anchor_loss.item(),
            "alpha": alpha.item(),
            "q": q.mean().item(),
        }
