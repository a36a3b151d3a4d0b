"""LeRobot pi0 / pi0.5 as a :class:`FlowPolicy`: steer the real model code.

``encode`` runs what LeRobot's ``sample_actions`` runs once per chunk (the image/language prefix
embedding and one cached prefix forward of the PaliGemma backbone) and keeps the transformers
``DynamicCache``; ``velocity`` is LeRobot's own ``denoise_step`` on that cache (which clones it,
so the cache is never extended). Time convention, horizon (the checkpoint's chunk size), padded
width (``max_action_dim`` = 32, the robot's dims first) and the action normalizer (the
checkpoint's processor statistics: pi0 mean/std, pi0.5 quantiles, LeRobot's epsilon) come from
the checkpoint, so a real-unit reference is normalized exactly as LeRobot normalizes actions.

Observations are the batch LeRobot's *preprocessor* makes (images in [0, 1], normalized state,
instruction tokens; pi0.5 also writes the discretized state into the prompt):
:meth:`LeRobotPiPolicy.preprocess` runs the checkpoint's own pipeline on one raw frame.

Checkpoints load from a local directory only (``config.json``, ``model.safetensors``,
``policy_preprocessor.json`` and its state file, as ``save_pretrained`` writes them; the
tokenizer as an object or in ``<dir>/tokenizer``). LeRobot is imported on first use through
:mod:`frs_steering.policies.lerobot_compat`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from frs_steering.normalization import MeanStdNormalizer, Normalizer, QuantileNormalizer
from frs_steering.policies.lerobot_compat import LeRobotModules, import_lerobot
from frs_steering.policy import ActionSpec, Observation, TimeConvention, repeat_batch

POLICY_TYPES = ("pi0", "pi05")
TOKENIZER_DIR = "tokenizer"
PREPROCESSOR_FILE = "policy_preprocessor.json"
STATE_KEY = "observation.state"
TOKENS_KEY = "observation.language.tokens"
TOKEN_MASK_KEY = "observation.language.attention_mask"
ACTION_KEY = "action"


class LeRobotCheckpointError(ValueError):
    """A LeRobot checkpoint directory cannot be used; ``str(err)`` names the problem."""


@dataclass(frozen=True)
class PiCache:
    """One encoded observation batch: the prefix's key/value cache and what the expert needs."""

    prefix_pad_masks: torch.Tensor  # [B, prefix_len] bool
    key_values: Any  # transformers DynamicCache over the prefix, batch-first tensors
    state: torch.Tensor | None  # [B, max_state_dim] padded normalized state (pi0 only)

    @property
    def batch_size(self) -> int:
        return int(self.prefix_pad_masks.shape[0])


def repeat_key_values(key_values: Any, repeats: int) -> Any:
    """A new ``DynamicCache`` with every layer's keys/values repeated along the batch axis."""
    from transformers.cache_utils import DynamicCache

    if not isinstance(key_values, DynamicCache):
        raise TypeError(f"expected a transformers DynamicCache, got {type(key_values).__name__}")
    # Iterating a DynamicCache yields (keys, values, sliding_window) per layer, the form its
    # constructor takes back (as LeRobot's clone_past_key_values does).
    return DynamicCache(
        tuple(
            (
                keys.repeat_interleave(repeats, dim=0),
                values.repeat_interleave(repeats, dim=0),
                window,
            )
            for keys, values, window in key_values
        )
    )


class LeRobotPiPolicy:
    """A LeRobot ``PI0Policy`` / ``PI05Policy`` behind the :class:`FlowPolicy` contract.

    ``prefix_forwards`` counts prefix forwards (one per :meth:`encode`), ``velocity_calls``
    the expert steps: what the benchmark and tests read to show the prefix runs once per steer.
    """

    def __init__(
        self, lerobot_policy: Any, normalizer: Normalizer, preprocessor: Any | None = None
    ) -> None:
        self.modules: LeRobotModules = import_lerobot()
        config = lerobot_policy.config
        if config.type not in POLICY_TYPES:
            raise LeRobotCheckpointError(
                f"policy type {config.type!r} is not one of {POLICY_TYPES}"
            )
        if getattr(config, "use_relative_actions", False):
            raise LeRobotCheckpointError(
                "use_relative_actions checkpoints predict actions relative to the state; a "
                "fixed normalizer cannot express that and steering them is not supported"
            )
        if getattr(config, "rtc_config", None) is not None and config.rtc_config.enabled:
            raise LeRobotCheckpointError("real-time chunking (rtc_config.enabled) is not supported")
        self.lerobot_policy = lerobot_policy.eval()
        self.model = lerobot_policy.model
        self.config = config
        self.kind: str = config.type
        self.preprocessor = preprocessor
        num_real = int(config.output_features[ACTION_KEY].shape[0])
        if not 0 < num_real <= config.max_action_dim:
            raise LeRobotCheckpointError(
                f"action dim {num_real} does not fit max_action_dim {config.max_action_dim}"
            )
        self._spec = ActionSpec(
            horizon=int(config.chunk_size),
            dim=int(config.max_action_dim),
            convention=TimeConvention.NOISE_AT_ONE,
            num_steps=int(config.num_inference_steps),
            real_dims=tuple(range(num_real)),  # LeRobot pads at the end (pad_vector)
            normalizer=normalizer,
            time_grid="indexed",  # LeRobot's euler_integrate: time = 1.0 + step * dt
        )
        self.image_keys: tuple[str, ...] = tuple(config.image_features)
        self.image_resolution: tuple[int, int] = tuple(config.image_resolution)  # type: ignore[assignment]
        self.state_dim = int(config.input_features[STATE_KEY].shape[0])
        self.prefix_forwards = 0
        self.velocity_calls = 0

    # ------------------------------------------------------------------ FlowPolicy contract
    @property
    def spec(self) -> ActionSpec:
        return self._spec

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, observation: Observation) -> PiCache:
        """Prefix embedding + one cached prefix forward, as ``sample_actions`` does."""
        missing = [k for k in (TOKENS_KEY, TOKEN_MASK_KEY, STATE_KEY) if k not in observation]
        if missing:
            raise ValueError(
                f"observation lacks {missing}; give the preprocessed batch "
                "(LeRobotPiPolicy.preprocess)"
            )
        batch = dict(observation)
        images, image_masks = self.lerobot_policy._preprocess_images(batch)
        tokens, token_masks = batch[TOKENS_KEY], batch[TOKEN_MASK_KEY]
        vla = self.modules.vla_utils
        model = self.model
        embeddings, pad_masks, att_masks = model.embed_prefix(
            images, image_masks, tokens, token_masks
        )
        att_4d = vla.prepare_attention_masks_4d(vla.make_att_2d_masks(pad_masks, att_masks))
        positions = torch.cumsum(pad_masks, dim=1) - 1
        language_model = model.paligemma_with_expert.paligemma.model.language_model
        language_model.config._attn_implementation = "eager"  # as sample_actions sets it
        _, key_values = model.paligemma_with_expert.forward(
            attention_mask=att_4d,
            position_ids=positions,
            past_key_values=None,
            inputs_embeds=[embeddings, None],
            use_cache=True,
        )
        self.prefix_forwards += 1
        state = self.lerobot_policy.prepare_state(batch) if self.kind == "pi0" else None
        return PiCache(pad_masks, key_values, state)

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, t: torch.Tensor, cache: PiCache) -> torch.Tensor:
        """LeRobot's ``denoise_step`` (it works on a clone of the cache; ours stays as is)."""
        if x.shape[0] != cache.batch_size:
            raise ValueError(f"x has batch {x.shape[0]}, the cache {cache.batch_size}")
        args = {
            "prefix_pad_masks": cache.prefix_pad_masks,
            "past_key_values": cache.key_values,
            "x_t": x,
            "timestep": t.to(torch.float32).expand(x.shape[0]),
        }
        if self.kind == "pi0":
            args["state"] = cache.state
        self.velocity_calls += 1
        return self.model.denoise_step(**args)

    def repeat_cache(self, cache: PiCache, repeats: int) -> PiCache:
        if repeats == 1:
            return cache
        return PiCache(
            prefix_pad_masks=repeat_batch(cache.prefix_pad_masks, repeats),
            key_values=repeat_key_values(cache.key_values, repeats),
            state=repeat_batch(cache.state, repeats),
        )

    # ------------------------------------------------------------------ LeRobot helpers
    def preprocess(self, frame: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The checkpoint's preprocessor on one raw frame: ``observation.images.<cam>``
        ``[3, H, W]`` in [0, 1], ``observation.state`` ``[n]`` in real units, ``task`` text.
        Returns the batch (B = 1) :meth:`encode` reads."""
        if self.preprocessor is None:
            raise ValueError("this policy was built without a preprocessor")
        out = self.preprocessor(dict(frame))
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}

    def camera_image(self, rgb: Any) -> torch.Tensor:
        """HxWx3 uint8 RGB -> ``[3, h, w]`` float in [0, 1] at the model's resolution, resized
        with padding by LeRobot's own ``resize_with_pad_torch`` exactly as ``_preprocess_images``
        would (which then leaves it as is)."""
        image = torch.as_tensor(rgb)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != torch.uint8:
            raise ValueError(
                f"expected an HxWx3 uint8 image, got {tuple(image.shape)} {image.dtype}"
            )
        image = image.to(torch.float32).div(255.0).unsqueeze(0)  # [1, H, W, 3] as LeRobot holds it
        if tuple(image.shape[1:3]) != self.image_resolution:
            image = self.modules.vla_utils.resize_with_pad_torch(image, *self.image_resolution)
        return image[0].permute(2, 0, 1).contiguous()

    def sample_actions(self, observation: Observation, noise: torch.Tensor) -> torch.Tensor:
        """LeRobot's own ``sample_actions`` on a preprocessed batch (reference for tests)."""
        batch = dict(observation)
        images, image_masks = self.lerobot_policy._preprocess_images(batch)
        args = [images, image_masks, batch[TOKENS_KEY], batch[TOKEN_MASK_KEY]]
        if self.kind == "pi0":
            args.append(self.lerobot_policy.prepare_state(batch))
        return self.model.sample_actions(*args, noise=noise)


# ---------------------------------------------------------------------------------- loading


def action_normalizer(preprocessor: Any, modules: LeRobotModules | None = None) -> Normalizer:
    """The action normalizer of a LeRobot preprocessor pipeline, with LeRobot's epsilon."""
    from lerobot.processor.normalize_processor import NormalizerProcessorStep

    modules = modules or import_lerobot()
    types_ = modules.configs_types
    steps = [s for s in preprocessor.steps if isinstance(s, NormalizerProcessorStep)]
    if len(steps) != 1:
        raise LeRobotCheckpointError(f"expected one normalizer step, found {len(steps)}")
    step = steps[0]
    mode = step.norm_map.get(types_.FeatureType.ACTION)
    stats = step._tensor_stats.get(ACTION_KEY)
    if stats is None:
        raise LeRobotCheckpointError("the preprocessor has no action statistics")

    def values(name: str) -> list[float]:
        if name not in stats:
            raise LeRobotCheckpointError(f"action statistics lack {name!r} for {mode}")
        return [float(v) for v in torch.as_tensor(stats[name]).double().flatten()]

    if mode == types_.NormalizationMode.MEAN_STD:
        return MeanStdNormalizer(values("mean"), values("std"), epsilon=float(step.eps))
    if mode == types_.NormalizationMode.QUANTILES:
        return QuantileNormalizer(values("q01"), values("q99"), epsilon=0.0)
    raise LeRobotCheckpointError(f"action normalization {mode} is not supported")


@contextlib.contextmanager
def _reading(what: Path | str) -> Iterator[None]:
    """LeRobotCheckpointError naming ``what`` (a file) for what LeRobot's, draccus's or
    safetensors's parsers raise on a broken file: their own types (SafetensorError,
    DecodingError, TypeError...), which callers that catch ValueError would miss."""
    try:
        yield
    except (LeRobotCheckpointError, ImportError):
        raise
    except Exception as error:  # noqa: BLE001 - the parsers raise many types on bad files
        raise LeRobotCheckpointError(
            f"cannot read {what}: {type(error).__name__}: {error}"
        ) from None


def _required_file(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise LeRobotCheckpointError(f"no {name} in LeRobot checkpoint directory {directory}")
    return path


def load_lerobot_pi(
    directory: str | Path, *, device: str | torch.device = "cpu", tokenizer: Any | None = None
) -> LeRobotPiPolicy:
    """Load a pi0 / pi0.5 checkpoint saved by LeRobot from a local directory (never the hub).

    ``tokenizer``: a tokenizer object for the preprocessor; default: ``<dir>/tokenizer``.
    Weights load strictly (a missing or unexpected tensor is an error, not a warning).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise LeRobotCheckpointError(
            f"LeRobot checkpoint {directory} is not a local directory (no hub downloads here)"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    modules = import_lerobot()
    config_file = _required_file(directory, "config.json")
    weights = _required_file(directory, "model.safetensors")
    preprocessor_file = _required_file(directory, PREPROCESSOR_FILE)
    with _reading(config_file):
        config = modules.configs_policies.PreTrainedConfig.from_pretrained(
            str(directory), local_files_only=True
        )
    if config.type not in POLICY_TYPES:
        raise LeRobotCheckpointError(f"{directory} holds a {config.type!r} policy, not pi0/pi05")
    config.device = str(device)
    policy_cls = (
        modules.modeling_pi0.PI0Policy if config.type == "pi0" else modules.modeling_pi05.PI05Policy
    )
    lerobot_policy = policy_cls(config)
    with _reading(weights):
        tensors = load_file(str(weights))
    tensors = lerobot_policy._fix_pytorch_state_dict_keys(tensors, config)
    tensors = {k if k.startswith("model.") else f"model.{k}": v for k, v in tensors.items()}
    missing, unexpected = lerobot_policy.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise LeRobotCheckpointError(
            f"{weights} does not match its config: missing {sorted(missing)[:5]} "
            f"({len(missing)}), unexpected {sorted(unexpected)[:5]} ({len(unexpected)})"
        )
    lerobot_policy.to(device)
    if tokenizer is None:
        tokenizer_dir = directory / TOKENIZER_DIR
        if not tokenizer_dir.is_dir():
            raise LeRobotCheckpointError(
                f"no tokenizer: pass one or save the checkpoint's tokenizer (pi0/pi05: "
                f"google/paligemma-3b-pt-224) to {tokenizer_dir}"
            )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    with _reading(f"{preprocessor_file} (or a state file it names)"):
        preprocessor = modules.pipeline.PolicyProcessorPipeline.from_pretrained(
            str(directory),
            config_filename=PREPROCESSOR_FILE,
            local_files_only=True,
            overrides={
                "tokenizer_processor": {"tokenizer": tokenizer},
                "device_processor": {"device": str(device)},
            },
        )
    return LeRobotPiPolicy(lerobot_policy, action_normalizer(preprocessor, modules), preprocessor)
