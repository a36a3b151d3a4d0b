"""The built-in pi0-like flow-matching policy, sized to run on a CPU in milliseconds.

Observation (``state`` [B, state_dim], optional ``instruction`` embedding [B, instruction_dim],
optional camera images ``image.<name>`` [B, 3, image_size, image_size] in [0, 1], one small
strided CNN per camera) -> an encoder run once per observation that precomputes the
observation's share of every FiLM modulation and a token bias. Two encoders: the default
(``encoder_depth=0``) adds a state MLP and a linear instruction projection; ``encoder_depth=n``
runs an n-hidden-layer MLP over the concatenation [state, instruction], which lets the
instruction *select* parts of the state (multiplicative interaction) instead of only shifting
one hidden layer. Camera features are added to that embedding. With ``input_normalization``
the inputs are standardized by per-feature statistics stored as weights (set once from the
training data by :meth:`FlowMatchingPolicy.set_input_statistics`). The action expert is an
MLP-mixer over the ``horizon`` action tokens, FiLM-conditioned per block on observation +
sinusoidal time embedding, so a velocity call costs only the time embedding and the mixer
blocks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from frs_steering.policy import ActionSpec, Observation, repeat_batch

FILM_TERMS_PER_BLOCK = 4  # shift and scale before the token mixer and before the channel MLP


@dataclass(frozen=True)
class FlowPolicyConfig:
    """Architecture and action space of :class:`FlowMatchingPolicy` (saved with checkpoints)."""

    action_spec: ActionSpec
    state_dim: int
    instruction_dim: int = 0
    width: int = 128
    depth: int = 4
    mlp_ratio: int = 4
    token_mlp_ratio: int = 2
    time_frequencies: int = 32
    min_period: float = 4e-3
    max_period: float = 4.0
    encoder_depth: int = 0  # 0: additive state MLP + linear instruction; n: MLP over the concat
    encoder_width: int = 0  # hidden width of the concat MLP (0: ``width``)
    input_normalization: bool = False  # standardize state / instruction with stored statistics
    # > 0: the standardized instruction is projected onto this many stored directions (e.g. the
    # discriminant directions between tasks, ``fit_discriminant_projection``) before the encoder
    instruction_projection_dim: int = 0
    image_keys: tuple[str, ...] = ()  # cameras, observed as ``image.<key>``
    image_size: int = 0  # square side (px) every camera image is resized to

    def __post_init__(self) -> None:
        for name in ("state_dim", "width", "depth", "mlp_ratio", "token_mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FlowPolicyConfig.{name} must be a positive int, got {value!r}")
        for name in ("encoder_depth", "encoder_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"FlowPolicyConfig.{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.input_normalization, bool):
            raise ValueError("input_normalization must be a bool")
        if not isinstance(self.instruction_dim, int) or self.instruction_dim < 0:
            raise ValueError(f"instruction_dim must be an int >= 0, got {self.instruction_dim!r}")
        projection = self.instruction_projection_dim
        if not isinstance(projection, int) or isinstance(projection, bool) or projection < 0:
            raise ValueError(f"instruction_projection_dim must be an int >= 0, got {projection!r}")
        if projection and not (self.input_normalization and self.encoder_depth):
            raise ValueError(
                "instruction_projection_dim needs input_normalization and encoder_depth"
            )
        if projection > self.instruction_dim:
            raise ValueError("instruction_projection_dim cannot exceed instruction_dim")
        object.__setattr__(self, "image_keys", tuple(str(k) for k in self.image_keys))
        if len(set(self.image_keys)) != len(self.image_keys):
            raise ValueError(f"image_keys must be distinct, got {self.image_keys}")
        if self.image_keys and (not isinstance(self.image_size, int) or self.image_size < 8):
            raise ValueError(f"image_size must be an int >= 8 with cameras, got {self.image_size}")
        if not isinstance(self.time_frequencies, int) or self.time_frequencies < 1:
            raise ValueError(f"time_frequencies must be positive, got {self.time_frequencies}")
        if not 0 < self.min_period < self.max_period:
            raise ValueError("need 0 < min_period < max_period")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["action_spec"] = self.action_spec.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlowPolicyConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown FlowPolicyConfig fields {sorted(unknown)}")
        if "action_spec" not in data:
            raise ValueError("FlowPolicyConfig needs an action_spec")
        fields = dict(data)
        fields["action_spec"] = ActionSpec.from_dict(fields["action_spec"])
        return cls(**fields)


class EncodedObservation(NamedTuple):
    """Per-observation cache: FiLM terms ``[B, depth, 4, 1, width]`` and token bias."""

    film: torch.Tensor
    token_bias: torch.Tensor


def _image_encoder(width: int) -> nn.Module:
    """A camera image [B, 3, S, S] in [0, 1] -> a ``width`` feature (two strided convs, mean)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=5, stride=2, padding=2),
        nn.SiLU(),
        nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, width),
    )


def _uniform_fan_in(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class MixerBlock(nn.Module):
    """FiLM-modulated token-mixing MLP (across the horizon) then channel MLP, both residual.

    ``film`` is ``[B, 4, 1, width]``: shift and scale (scale already offset by 1) for each of
    the two sublayers. Token mixing multiplies from the left, so no transposes are needed.
    """

    def __init__(self, horizon: int, width: int, mlp_ratio: int, token_mlp_ratio: int) -> None:
        super().__init__()
        hidden = horizon * token_mlp_ratio
        self.token_in_weight = _uniform_fan_in((hidden, horizon), horizon)
        self.token_in_bias = _uniform_fan_in((hidden, 1), horizon)
        self.token_out_weight = _uniform_fan_in((horizon, hidden), hidden)
        self.token_out_bias = _uniform_fan_in((horizon, 1), hidden)
        self.channel_in = nn.Linear(width, width * mlp_ratio)
        self.channel_out = nn.Linear(width * mlp_ratio, width)
        self.width = width

    def forward(self, h: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, shift_b, scale_b = film.unbind(1)
        batch = h.shape[0]
        y = torch.addcmul(shift_a, F.layer_norm(h, (self.width,)), scale_a)
        token_in = self.token_in_weight.expand(batch, -1, -1)
        token_out = self.token_out_weight.expand(batch, -1, -1)
        y = torch.baddbmm(self.token_in_bias, token_in, y)
        y = torch.baddbmm(self.token_out_bias, token_out, F.silu(y))
        h = h + y
        y = torch.addcmul(shift_b, F.layer_norm(h, (self.width,)), scale_b)
        return h + self.channel_out(F.silu(self.channel_in(y)))


class FlowMatchingPolicy(nn.Module):
    """Small flow-matching policy implementing :class:`frs_steering.policy.FlowPolicy`."""

    def __init__(self, config: FlowPolicyConfig, seed: int | None = 0) -> None:
        super().__init__()
        self.config = config
        spec = config.action_spec
        width, depth = config.width, config.depth
        film_size = depth * FILM_TERMS_PER_BLOCK * width
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            if config.encoder_depth == 0:
                self.state_encoder = nn.Sequential(
                    nn.Linear(config.state_dim, width), nn.SiLU(), nn.Linear(width, width)
                )
                self.instruction_encoder = (
                    nn.Linear(config.instruction_dim, width) if config.instruction_dim else None
                )
            else:
                hidden = config.encoder_width or width
                layers: list[nn.Module] = []
                size = config.state_dim + (
                    config.instruction_projection_dim or config.instruction_dim
                )
                for _ in range(config.encoder_depth):
                    layers += [nn.Linear(size, hidden), nn.SiLU()]
                    size = hidden
                layers.append(nn.Linear(size, width))
                self.observation_encoder = nn.Sequential(*layers)
            self.image_encoders = nn.ModuleDict(
                {key: _image_encoder(width) for key in config.image_keys}
            )
            self.observation_film = nn.Linear(width, film_size)
            self.observation_token_bias = nn.Linear(width, width)
            self.time_encoder = nn.Sequential(
                nn.Linear(2 * config.time_frequencies, width), nn.SiLU(), nn.Linear(width, width)
            )
            self.time_film = nn.Linear(width, film_size)
            self.action_in = nn.Linear(spec.dim, width)
            self.position = nn.Parameter(0.02 * torch.randn(spec.horizon, width))
            self.blocks = nn.ModuleList(
                MixerBlock(spec.horizon, width, config.mlp_ratio, config.token_mlp_ratio)
                for _ in range(depth)
            )
            self.action_out = nn.Linear(width, spec.dim)
        # Start as an identity map per block and a zero velocity, so early training is stable.
        for layer in (self.observation_film, self.time_film, self.action_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        # FiLM scales act as (1 + learned); the 1 is added once per encode, not per call.
        offset = torch.zeros(FILM_TERMS_PER_BLOCK, 1, width)
        offset[1::2] = 1.0
        self.register_buffer("film_offset", offset, persistent=False)
        if config.input_normalization:  # saved with the weights; identity until set
            for name, size in (
                ("state", config.state_dim),
                ("instruction", config.instruction_dim),
            ):
                self.register_buffer(f"{name}_shift", torch.zeros(size))
                self.register_buffer(f"{name}_scale", torch.ones(size))
        if config.instruction_projection_dim:  # saved with the weights; set before training
            eye = torch.eye(config.instruction_dim)[:, : config.instruction_projection_dim]
            self.register_buffer("instruction_projection", eye.clone())
        periods = torch.logspace(
            math.log10(config.min_period), math.log10(config.max_period), config.time_frequencies
        )
        self.register_buffer("time_angular_rates", 2 * math.pi / periods, persistent=False)

    @property
    def spec(self) -> ActionSpec:
        return self.config.action_spec

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def set_input_statistics(self, observations: Observation, min_std: float = 1e-3) -> None:
        """Store per-feature mean and 1/std of the training observations (needs
        ``input_normalization``); features with std below ``min_std`` are only centred."""
        if not self.config.input_normalization:
            raise ValueError("set_input_statistics needs config.input_normalization=True")
        for name in ("state", "instruction"):
            if name not in observations or getattr(self, f"{name}_shift").numel() == 0:
                continue
            values = observations[name].double()
            std = values.std(dim=0, unbiased=False)
            scale = torch.where(std > min_std, 1.0 / std.clamp_min(min_std), torch.ones_like(std))
            getattr(self, f"{name}_shift").copy_(values.mean(dim=0))
            getattr(self, f"{name}_scale").copy_(scale)

    @torch.no_grad()
    def set_instruction_projection(self, projection: torch.Tensor) -> None:
        """Store the [instruction_dim, instruction_projection_dim] map applied to the
        standardized instruction (needs ``instruction_projection_dim``)."""
        expected = (self.config.instruction_dim, self.config.instruction_projection_dim)
        if not self.config.instruction_projection_dim:
            raise ValueError("set_instruction_projection needs config.instruction_projection_dim")
        if tuple(projection.shape) != expected or not torch.isfinite(projection).all():
            raise ValueError(f"projection must be a finite {list(expected)} matrix")
        self.instruction_projection.copy_(projection)

    def _normalized(self, observation: Observation, name: str, batch: int) -> torch.Tensor:
        param = self.action_in.weight
        size = self.config.state_dim if name == "state" else self.config.instruction_dim
        value = observation.get(name)
        value = param.new_zeros(batch, size) if value is None else value.to(param)
        if self.config.input_normalization:
            value = (value - getattr(self, f"{name}_shift")) * getattr(self, f"{name}_scale")
        if name == "instruction" and self.config.instruction_projection_dim:
            value = value @ self.instruction_projection
        return value

    def _check_observation(self, observation: Observation) -> int:
        if not isinstance(observation, Mapping):
            raise ValueError(f"observation must be a mapping, got {type(observation).__name__}")
        allowed = {"state", "instruction"} if self.config.instruction_dim else {"state"}
        images = {f"image.{key}" for key in self.config.image_keys}
        missing = images - set(observation)
        if missing:
            raise ValueError(f"observation lacks camera images {sorted(missing)}")
        allowed |= images
        unknown = set(observation) - allowed
        if unknown:
            raise ValueError(f"unknown observation keys {sorted(unknown)}; expected {allowed}")
        if "state" not in observation:
            raise ValueError("observation needs a 'state' tensor")
        expected = {"state": self.config.state_dim, "instruction": self.config.instruction_dim}
        batch = None
        size = self.config.image_size
        for key, value in observation.items():
            if key in images:
                want: tuple[int, ...] = (3, size, size)
                shape_text = f"[B, 3, {size}, {size}]"
            else:
                want, shape_text = (expected[key],), f"[B, {expected[key]}]"
            if not isinstance(value, torch.Tensor) or value.ndim != len(want) + 1:
                raise ValueError(f"observation[{key!r}] must be a {shape_text} tensor")
            if tuple(value.shape[1:]) != want or value.shape[0] == 0:
                raise ValueError(
                    f"observation[{key!r}] must be {shape_text}, got {tuple(value.shape)}"
                )
            if batch is not None and value.shape[0] != batch:
                raise ValueError("observation tensors disagree on the batch size")
            batch = value.shape[0]
            if not torch.isfinite(value).all():
                raise ValueError(f"observation[{key!r}] contains NaN or Inf")
        return batch  # type: ignore[return-value]

    def encode(self, observation: Observation) -> EncodedObservation:
        """Run the observation encoder once; a missing instruction counts as a zero embedding."""
        embedding = self.observation_embedding(observation)
        batch = embedding.shape[0]
        film = self.observation_film(embedding).view(
            batch, self.config.depth, FILM_TERMS_PER_BLOCK, 1, self.config.width
        )
        film = film + self.film_offset
        token_bias = self.observation_token_bias(embedding).unsqueeze(1)
        return EncodedObservation(film=film, token_bias=token_bias)

    def observation_embedding(self, observation: Observation) -> torch.Tensor:
        """``[B, width]``: everything the flow is conditioned on, before the per-block FiLM
        terms (small learned policies read it as an input: the instruction as this policy
        understands it)."""
        batch = self._check_observation(observation)
        state = self._normalized(observation, "state", batch)
        if self.config.encoder_depth:
            inputs = [state]
            if self.config.instruction_dim:
                inputs.append(self._normalized(observation, "instruction", batch))
            embedding = self.observation_encoder(torch.cat(inputs, dim=1))
        else:
            embedding = self.state_encoder(state)
            if self.instruction_encoder is not None and "instruction" in observation:
                instruction = self._normalized(observation, "instruction", batch)
                embedding = embedding + self.instruction_encoder(instruction)
        for key, encoder in self.image_encoders.items():
            embedding = embedding + encoder(observation[f"image.{key}"].to(state))
        return F.silu(embedding)

    def repeat_cache(self, cache: EncodedObservation, repeats: int) -> EncodedObservation:
        return repeat_batch(cache, repeats)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.to(self.time_angular_rates.dtype)[:, None] * self.time_angular_rates
        return self.time_encoder(torch.cat((angles.sin(), angles.cos()), dim=1))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cache: EncodedObservation) -> torch.Tensor:
        """Velocity of the normalized, padded chunk ``x`` [B, horizon, dim] at times ``t`` [B]."""
        batch = x.shape[0]
        if x.ndim != 3 or x.shape[1:] != self.spec.chunk_shape:
            raise ValueError(
                f"x must be [B, {self.spec.horizon}, {self.spec.dim}], got {tuple(x.shape)}"
            )
        if t.shape != (batch,) or cache.film.shape[0] != batch:
            raise ValueError(
                f"batch mismatch: x {batch}, t {tuple(t.shape)}, cache {cache.film.shape[0]}"
            )
        graph = self.__dict__.get("_velocity_graph")
        if graph is not None and not self.training and not torch.is_grad_enabled():
            return graph(x, t, cache.film, cache.token_bias)
        return self._velocity(x, t, cache.film, cache.token_bias)

    def _velocity(
        self, x: torch.Tensor, t: torch.Tensor, film: torch.Tensor, token_bias: torch.Tensor
    ) -> torch.Tensor:
        time_film = self.time_film(F.silu(self.time_embedding(t)))
        film = film + time_film.view_as(film)
        h = self.action_in(x) + self.position + token_bias
        for block, block_film in zip(self.blocks, film.unbind(1), strict=True):
            h = block(h, block_film)
        return self.action_out(F.layer_norm(h, (self.config.width,)))

    def compile_velocity(self) -> FlowMatchingPolicy:
        """Run inference calls of :meth:`velocity` through a TorchScript graph of the network.

        For serving (the steering node): outputs are bit-identical, a call is ~20% faster here,
        and the graph runs without holding the GIL, so a ROS executor thread beside it neither
        slows it nor waits for it. The graph shares this module's parameters; calls with
        autograd or in train mode keep the eager path. Call it after moving the module; the
        module is no longer picklable afterwards. Returns ``self``.
        """
        param = self.action_in.weight
        width, spec = self.config.width, self.spec
        examples = (
            param.new_zeros(1, *spec.chunk_shape),
            param.new_zeros(1),
            param.new_zeros(1, self.config.depth, FILM_TERMS_PER_BLOCK, 1, width),
            param.new_zeros(1, 1, width),
        )
        with torch.no_grad(), warnings.catch_warnings():
            # Deprecated in favour of torch.compile / torch.export, whose graphs run as Python
            # and hold the GIL; TorchScript is the one that does not (torch is pinned).
            warnings.simplefilter("ignore", DeprecationWarning)
            graph = torch.jit.trace(_VelocityNetwork(self), examples, check_trace=False)
        self.__dict__["_velocity_graph"] = graph  # not a submodule: no state_dict entries
        return self


class _VelocityNetwork(nn.Module):
    """The velocity network alone, as :func:`torch.jit.trace` takes it (tensors in, tensor out)."""

    def __init__(self, policy: FlowMatchingPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, film: torch.Tensor, token_bias: torch.Tensor
    ) -> torch.Tensor:
        return self.policy._velocity(x, t, film, token_bias)


def fit_discriminant_projection(
    features: torch.Tensor, labels: Sequence[Any], shrinkage: float = 0.1
) -> torch.Tensor:
    """Linear discriminant directions of ``features`` [N, D] between the classes of ``labels``.

    Returns a [D, classes - 1] map whose outputs separate the classes relative to the spread
    within each class (e.g. instruction embeddings: tasks apart, paraphrases together), scaled
    to unit standard deviation over ``features``. ``shrinkage`` blends the within-class scatter
    toward its mean eigenvalue (D is large next to the number of distinct texts).
    """
    x = features.double()
    classes = sorted(set(labels), key=str)
    if len(classes) < 2 or len(labels) != x.shape[0]:
        raise ValueError("need one label per feature row and at least two classes")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    index = torch.tensor([classes.index(label) for label in labels])
    means = torch.stack([x[index == k].mean(dim=0) for k in range(len(classes))])
    centred = x - means[index]
    within = centred.T @ centred / x.shape[0]
    average = torch.trace(within) / within.shape[0]
    within = (1.0 - shrinkage) * within + shrinkage * average * torch.eye(within.shape[0])
    between = torch.cov((means - x.mean(dim=0)).T, correction=0)
    values, vectors = torch.linalg.eigh(within)
    whiten = vectors @ torch.diag(values.clamp_min(1e-12).rsqrt()) @ vectors.T
    _, directions = torch.linalg.eigh(whiten @ between @ whiten)
    projection = whiten @ directions[:, -(len(classes) - 1) :].flip(-1)
    projection = projection / (x @ projection).std(dim=0, unbiased=False).clamp_min(1e-12)
    return projection.to(features.dtype)
