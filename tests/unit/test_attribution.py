"""Word ablation (pipeline/attribution.py): exact in the toy world, where each word's region is known."""

from __future__ import annotations

import pytest
import torch

from pipeline import GenerationRequest, RequestError
from pipeline.attribution import ablations, alpha_at, word_ablation

TOY_SIZE = dict(width=256, height=256)  # the toy's own size (pipeline.models.toy.DEFAULT_SIZE)


def _halves(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy of (N, 4, h, w) latents in the left and right halves of the image (grey background is 0)."""
    energy = x0.pow(2).sum(dim=1)
    w = energy.shape[-1]
    return energy[..., : w // 2].sum(dim=(-2, -1)), energy[..., w // 2:].sum(dim=(-2, -1))


def test_dropping_left_moves_the_toys_mass_from_the_left_half(toy_pipe):
    """The toy's x̂₀ at the first step is the posterior mean over its items: with "left" the red circles on the
    left, without it those on both sides. So dropping "left" takes mass from the left half and puts it on the
    right (measured: 44 -> 17 on the left, 3 -> 10 on the right, seed 3)."""
    request = GenerationRequest(prompt="red circle left", steps=20, seeds=(3,), **TOY_SIZE)
    ablation = word_ablation(toy_pipe, request, step=1)
    assert [d.word for d in ablation.dropped] == ["red", "circle", "left"]
    (full_left,), (full_right,) = _halves(ablation.x0)
    drop_left, drop_right = _halves(ablation.dropped_x0[2:])
    assert drop_left < 0.5 * full_left and drop_right > 2 * full_right


def test_a_colour_word_controls_the_shapes_region(toy_pipe):
    """Dropping "red" from "red circle left" changes x̂₀ where the circle is (the left), far more than elsewhere."""
    request = GenerationRequest(prompt="red circle left", steps=20, seeds=(3,), **TOY_SIZE)
    ablation = word_ablation(toy_pipe, request, step=1)
    heat = ablation.heat()[0]
    w = heat.shape[-1]
    assert heat[:, : w // 2].sum() > 5 * heat[:, w // 2:].sum()


def test_a_word_the_model_does_not_know_changes_nothing(toy_pipe):
    """The toy's encoders embed unknown words to nothing, so dropping one leaves x̂₀ exactly as it was."""
    request = GenerationRequest(prompt="red banana circle", steps=10, seeds=(1,), **TOY_SIZE)
    ablation = word_ablation(toy_pipe, request, step=2)
    assert ablation.delta[1].abs().max() == 0
    assert ablation.delta[0].abs().max() > 0


def test_ablation_runs_on_a_real_unet_with_prompt_2(tiny_pipe):
    """On the tiny SDXL: one row per word of Prompt and of Prompt 2, each x̂₀ on the run's latent grid."""
    request = GenerationRequest(prompt="a red cat", prompt_2="blue dog", steps=3, width=64, height=96, seeds=(1, 2))
    ablation = word_ablation(tiny_pipe, request, step=2, seed=2)
    assert [(d.field, d.word) for d in ablation.dropped] == [("prompt", "a"), ("prompt", "red"), ("prompt", "cat"),
                                                              ("prompt_2", "blue"), ("prompt_2", "dog")]
    assert ablation.dropped[1].prompt == "a cat" and ablation.dropped[4].prompt_2 == "blue"
    assert ablation.x0.shape == (1, 4, 12, 8) and ablation.dropped_x0.shape == (5, 4, 12, 8)
    assert ablation.seed == 2 and bool(torch.isfinite(ablation.heat()).all())


def test_prompt_2_of_one_word_is_dropped_to_nothing_not_to_prompt():
    """An empty Prompt 2 means "Prompt again" (diffusers' rule); dropping its only word must not mean that."""
    dropped = ablations(GenerationRequest(prompt="red circle", prompt_2="left"))[-1]
    assert dropped.field == "prompt_2" and dropped.prompt_2.strip() == "" and dropped.prompt_2


@pytest.mark.parametrize("kwargs, field", [({"step": 0}, "step"), ({"step": 11}, "step"),
                                           ({"step": 1, "seed": 9}, "seed")])
def test_bad_step_or_seed_is_refused_naming_it(toy_pipe, kwargs, field):
    with pytest.raises(RequestError) as info:
        word_ablation(toy_pipe, GenerationRequest(prompt="red circle", steps=10, seeds=(1,), **TOY_SIZE), **kwargs)
    assert info.value.field == field


def test_alpha_at_integer_timesteps_is_alphas_cumprod(toy_pipe):
    acp = toy_pipe.scheduler.alphas_cumprod
    for t in (0, 1, 500, 999):
        assert alpha_at(acp, torch.tensor(float(t))) == pytest.approx(float(acp[t]), rel=1e-6)
