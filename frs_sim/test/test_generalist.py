"""Generalist recipe: demos -> normalizer -> flow-matching training -> checkpoint."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from frs_sim.demonstrations import generate_demos
from frs_sim.studies.generalist import (
    GeneralistRecipe,
    action_limit_bounds,
    demos_to_tensors,
    fit_action_normalizer,
    instruction_classes,
    plot_losses,
    train_generalist,
    within_task_spread,
)
from frs_sim.tasks import find_task
from frs_steering.checkpoint import load_policy
from frs_steering.instructions import EMBEDDING_DIM


def fake_embedding(text: str) -> np.ndarray:
    """Deterministic stand-in for MiniLM (keeps the test offline-model free and fast)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    vec = np.random.default_rng(seed).normal(size=EMBEDDING_DIM).astype(np.float32)
    return vec / np.linalg.norm(vec)


@pytest.fixture(scope="module")
def tiny_demos():
    tasks = [find_task("lift_red"), find_task("place_green_yellow")]
    return generate_demos(tasks, episodes=2, seed=0, progress=False, embed_fn=fake_embedding)


TINY = GeneralistRecipe(width=32, depth=1, steps=150, batch_size=32, learning_rate=3e-3)


def test_demos_become_policy_tensors(tiny_demos):
    observations, actions = demos_to_tensors(tiny_demos)
    assert observations["state"].shape == (len(tiny_demos), 46)
    assert observations["instruction"].shape == (len(tiny_demos), EMBEDDING_DIM)
    assert actions.shape == (len(tiny_demos), 10, 7)


def test_normalizer_spans_at_least_the_action_limits(tiny_demos):
    _, actions = demos_to_tensors(tiny_demos)
    normalizer = fit_action_normalizer(actions)
    low, high = action_limit_bounds()
    assert all(q <= lo for q, lo in zip(normalizer.q01, low, strict=True))
    assert all(q >= hi for q, hi in zip(normalizer.q99, high, strict=True))
    normalized = normalizer.normalize(actions)
    assert normalized.abs().max() <= 1.0 + 1e-5  # no rare-dim outliers (dyaw, rotation)
    one_step = normalizer.normalize(torch.tensor([[0.05, 0, 0, 0, 0, 0, 0.0]]))
    assert one_step[0, 0].item() == pytest.approx(1.0, abs=1e-4)


def test_tiny_training_lowers_the_loss_and_round_trips(tiny_demos, tmp_path):
    torch.manual_seed(0)
    policy, losses = train_generalist(tiny_demos, TINY, progress=False)
    assert len(losses) == TINY.steps
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])
    assert policy.spec.horizon == 10 and policy.spec.dim == 8 and policy.spec.num_real == 7
    assert policy.config.state_dim == 46 and policy.config.instruction_dim == EMBEDDING_DIM

    from frs_steering.checkpoint import save_policy

    save_policy(policy, tmp_path / "ckpt")
    plot_losses(losses, tmp_path / "ckpt" / "loss.png")
    assert (tmp_path / "ckpt" / "loss.png").stat().st_size > 1000
    loaded = load_policy(tmp_path / "ckpt")
    observations, _ = demos_to_tensors(tiny_demos)
    assert observations["state"].shape[1] == 46  # the positions-only prefix
    moving, _ = demos_to_tensors(tiny_demos, 49)
    torch.testing.assert_close(moving["state"][:, :46], observations["state"])
    assert moving["state"][:, 46:].abs().max() > 0.1  # the expert's EE velocity, m/s
    obs = {k: v[:3] for k, v in observations.items()}
    x = torch.randn(3, 10, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((3,), 0.5)
    with torch.no_grad():
        expected = policy.velocity(x, t, policy.encode(obs))
        got = loaded.velocity(x, t, loaded.encode(obs))
    torch.testing.assert_close(got, expected)
    assert loaded.spec.normalizer.to_dict() == policy.spec.normalizer.to_dict()


def test_training_is_deterministic(tiny_demos):
    recipe = GeneralistRecipe(width=16, depth=1, steps=20, batch_size=16)
    _, first = train_generalist(tiny_demos, recipe, progress=False)
    _, second = train_generalist(tiny_demos, recipe, progress=False)
    assert first == second


def test_instruction_dropout_changes_training_not_the_demonstrations(tiny_demos):
    recipe = GeneralistRecipe(width=16, depth=1, steps=20, batch_size=16)
    dropped = dataclasses.replace(recipe, instruction_dropout=0.5)
    assert dropped.demo_key() == recipe.demo_key()  # the same cached demonstrations
    _, plain = train_generalist(tiny_demos, recipe, progress=False)
    _, with_dropout = train_generalist(tiny_demos, dropped, progress=False)
    assert with_dropout != plain


def test_instruction_noise_changes_training_not_the_demonstrations(tiny_demos):
    """Scaled by the paraphrases' spread: demonstrations with one text per task are refused."""
    recipe = GeneralistRecipe(width=16, depth=1, steps=20, batch_size=16)
    noisy = dataclasses.replace(recipe, instruction_noise=1.0)
    assert noisy.demo_key() == recipe.demo_key()
    assert len(tiny_demos.instructions) == 2
    with pytest.raises(ValueError, match="paraphrases"):
        train_generalist(tiny_demos, noisy, progress=False)
    tasks = [find_task("lift_red"), find_task("place_green_yellow")]
    demos = generate_demos(tasks, episodes=6, seed=0, progress=False, embed_fn=fake_embedding)
    _, plain = train_generalist(demos, recipe, progress=False)
    _, with_noise = train_generalist(demos, noisy, progress=False)
    assert with_noise != plain
    assert train_generalist(demos, noisy, progress=False)[1] == with_noise  # seeded
    half = dataclasses.replace(noisy, instruction_noise_share=0.5)
    assert half.demo_key() == recipe.demo_key()
    assert train_generalist(demos, half, progress=False)[1] not in (plain, with_noise)


def test_within_task_spread_is_the_rms_deviation_from_each_tasks_mean():
    embeddings = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0], [0.0, 5.0]])
    # task a: deviations (-1, 0), (1, 0); task b: none -> sqrt(2 / 8)
    assert within_task_spread(embeddings, ["a", "a", "b", "b"]) == pytest.approx(0.5)
    assert within_task_spread(embeddings, ["a", "b", "c", "d"]) == 0.0
    with pytest.raises(ValueError, match="one class per embedding"):
        within_task_spread(embeddings, ["a", "b"])


def test_beta_time_sampling_changes_training_not_the_demonstrations(tiny_demos):
    recipe = GeneralistRecipe(width=16, depth=1, steps=20, batch_size=16)
    beta = dataclasses.replace(recipe, time_sampling="beta")
    assert beta.demo_key() == recipe.demo_key()
    _, uniform_losses = train_generalist(tiny_demos, recipe, progress=False)
    _, beta_losses = train_generalist(tiny_demos, beta, progress=False)
    assert beta_losses != uniform_losses
    assert train_generalist(tiny_demos, beta, progress=False)[1] == beta_losses  # seeded


def test_the_projection_shrinkage_is_the_recipes():
    """``instruction_lda_shrinkage`` reaches the fitted projection (the same cached demos): at 1
    no whitening is left, and the one direction between the two tasks is their mean difference."""
    tasks = [find_task("lift_red"), find_task("place_green_yellow")]
    tiny_demos = generate_demos(tasks, episodes=6, seed=0, progress=False, embed_fn=fake_embedding)
    assert len(tiny_demos.instructions) > len(tasks)  # paraphrases: a within-task scatter
    recipe = GeneralistRecipe(width=16, depth=1, steps=2, batch_size=16, instruction_lda=True)
    gentle = dataclasses.replace(recipe, instruction_lda_shrinkage=1.0)
    assert gentle.demo_key() == recipe.demo_key()
    hard, _ = train_generalist(tiny_demos, recipe, progress=False)
    soft, _ = train_generalist(tiny_demos, gentle, progress=False)
    texts = torch.from_numpy(np.asarray(tiny_demos.instruction_embeddings, dtype=np.float32))
    standardized = (texts - soft.instruction_shift) * soft.instruction_scale
    classes = instruction_classes(tiny_demos, recipe.split)
    first = torch.tensor([c == classes[0] for c in classes])
    difference = standardized[first].mean(0) - standardized[~first].mean(0)
    cosine = torch.nn.functional.cosine_similarity(
        soft.instruction_projection[:, 0].double(), difference.double(), dim=0
    )
    assert abs(float(cosine)) == pytest.approx(1.0, abs=1e-4)
    assert not torch.allclose(hard.instruction_projection, soft.instruction_projection)
