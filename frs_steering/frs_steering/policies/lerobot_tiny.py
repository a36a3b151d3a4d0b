"""Tiny random LeRobot pi0 / pi0.5 checkpoints for tests and benchmarks (no hub, ~1.5 s).

The architecture is LeRobot's own, shrunk: openpi's ``dummy`` Gemma sizes for the backbone
(width 64, depth 4, 8 heads, 1 KV head, head dim 16) and an expert of width 32 with the same
heads, a 1-layer SigLIP of width 32 on 64x64 images, and a word-level tokenizer over a small
vocabulary. :func:`tiny_architecture` swaps LeRobot's variant lookup and vision tower while a
model is *built* (also while a tiny checkpoint is loaded); the loading path is the real one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from frs_steering.policies.lerobot_compat import import_lerobot

IMAGE_SIZE = 64
TINY_CAMERAS = ("exterior_1", "wrist")
_WORDS = (
    "pick place put push move open close the a cube block red green blue left right up down "
    "into onto on in of to and task state action : , ;"
).split()


def local_tokenizer() -> Any:
    """A word-level fast tokenizer (numbers 0-255 and a few words), for pi0.5's state prompt."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1}
    for word in [*_WORDS, *map(str, range(256))]:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=False)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>")


@contextlib.contextmanager
def tiny_architecture() -> Iterator[None]:
    """While active, LeRobot pi0 / pi05 models build at the tiny sizes of the module doc."""
    modules = import_lerobot()
    gemma_config = modules.modeling_pi0.GemmaConfig
    backbone = gemma_config(
        width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16
    )
    expert = gemma_config(width=32, depth=4, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16)

    def variant(name: str) -> Any:
        return backbone if name == "gemma_2b" else expert

    saved = []
    for module in (modules.modeling_pi0, modules.modeling_pi05):
        real_vlm = module.PaliGemmaForConditionalGenerationWithPiGemma

        def small_vlm(config: Any, _real: Any = real_vlm) -> Any:
            vision = config.vision_config
            vision.hidden_size, vision.intermediate_size = 32, 64
            vision.num_hidden_layers, vision.num_attention_heads, vision.patch_size = 1, 2, 16
            width = config.text_config.hidden_size
            vision.projection_dim = config.projection_dim = config.hidden_size = width
            return _real(config=config)

        saved.append((module, module.get_gemma_config, real_vlm))
        module.get_gemma_config = variant
        module.PaliGemmaForConditionalGenerationWithPiGemma = small_vlm
    try:
        yield
    finally:
        for module, get_config, real_vlm in saved:
            module.get_gemma_config = get_config
            module.PaliGemmaForConditionalGenerationWithPiGemma = real_vlm


def tiny_stats(kind: str, state_dim: int, action_dim: int) -> dict[str, dict[str, torch.Tensor]]:
    """Dataset statistics with distinct per-dim values (so normalization is visible)."""
    gen = torch.Generator().manual_seed(3)
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for key, dim in (("observation.state", state_dim), ("action", action_dim)):
        center = torch.randn(dim, generator=gen)
        spread = 0.2 + torch.rand(dim, generator=gen)
        stats[key] = {
            "mean": center,
            "std": spread,
            "q01": center - 2 * spread,
            "q99": center + 2 * spread + 0.1,
            "min": center - 3 * spread,
            "max": center + 3 * spread,
        }
    return stats


def write_tiny_checkpoint(
    directory: str | Path,
    kind: str = "pi05",
    *,
    seed: int = 0,
    state_dim: int = 8,
    action_dim: int = 8,
    cameras: Sequence[str] = TINY_CAMERAS,
    chunk_size: int = 50,
) -> Path:
    """Build a random tiny ``kind`` model and save it as LeRobot does (policy, processors,
    tokenizer in ``<dir>/tokenizer``); returns the directory."""
    modules = import_lerobot()
    types_ = modules.configs_types
    feature = types_.PolicyFeature
    if kind == "pi0":
        config_cls, policy_cls = modules.configuration_pi0.PI0Config, modules.modeling_pi0.PI0Policy
        make_processors = modules.processor_pi0.make_pi0_pre_post_processors
    elif kind == "pi05":
        config_cls = modules.configuration_pi05.PI05Config
        policy_cls = modules.modeling_pi05.PI05Policy
        make_processors = modules.processor_pi05.make_pi05_pre_post_processors
    else:
        raise ValueError(f"kind must be 'pi0' or 'pi05', got {kind!r}")
    inputs = {
        f"observation.images.{camera}": feature(
            types_.FeatureType.VISUAL, (3, IMAGE_SIZE, IMAGE_SIZE)
        )
        for camera in cameras
    }
    inputs["observation.state"] = feature(types_.FeatureType.STATE, (state_dim,))
    config = config_cls(
        device="cpu",
        dtype="float32",
        image_resolution=(IMAGE_SIZE, IMAGE_SIZE),
        chunk_size=chunk_size,
        n_action_steps=chunk_size,
        input_features=inputs,
        output_features={"action": feature(types_.FeatureType.ACTION, (action_dim,))},
    )
    torch.manual_seed(seed)
    with tiny_architecture():
        policy = policy_cls(config)
    directory = Path(directory)
    policy.save_pretrained(directory)
    tokenizer = local_tokenizer()
    tokenizer.save_pretrained(str(directory / "tokenizer"))
    from lerobot.processor.tokenizer_processor import TokenizerProcessorStep

    real_init = TokenizerProcessorStep.__init__

    def with_local_tokenizer(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("tokenizer_name", None)
        kwargs["tokenizer"] = tokenizer
        real_init(self, *args, **kwargs)

    TokenizerProcessorStep.__init__ = with_local_tokenizer  # the factory names the hub's
    try:
        pre, post = make_processors(config, dataset_stats=tiny_stats(kind, state_dim, action_dim))
    finally:
        TokenizerProcessorStep.__init__ = real_init
    pre.save_pretrained(str(directory))
    post.save_pretrained(str(directory))
    return directory


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m frs_steering.policies.lerobot_tiny steering_node [--ros-args ...]``: the
    steering node, with tiny LeRobot checkpoints loadable (``checkpoint:=lerobot:<dir>``);
    ``... write <dir> [pi0|pi05]`` writes one. For tests and demos without real weights."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["write"] and len(args) in (2, 3):
        print(write_tiny_checkpoint(args[1], args[2] if len(args) == 3 else "pi05"))
        return
    if args[:1] != ["steering_node"]:
        raise SystemExit(main.__doc__)
    from frs_steering.steering_node import main as steering_main

    with tiny_architecture():
        steering_main(args[1:])


if __name__ == "__main__":
    main()
