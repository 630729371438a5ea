"""The perturbed-model modes (issue 22) apart from diffusers: their formulas and passes, the toy world's weak
model in closed form, and what the toy refuses. Parity with diffusers: tests/parity/test_perturbed_parity.py."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline import GenerationRequest, generate
from pipeline.guidance import COND, UNCOND, Part, Source, guidance_mode
from pipeline.loop import _plan, plan_passes
from pipeline.models.toy import WEAK_WIDTH, ideal_epsilon
from pipeline.request import RequestError
from pipeline.whatif import RunCache, whatif

MODES = {"pag": "pag_scale", "seg": "seg_scale", "autoguidance": "auto_scale"}


def preds(seed=0, shape=(2, 4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(3)]


@pytest.mark.parametrize("name", MODES)
def test_formula_is_cfg_plus_the_step_away_from_the_perturbed_prediction(name):
    cond, uncond, perturbed = preds()
    mode = guidance_mode(name)
    req = GenerationRequest(prompt="x", mode=name, **{MODES[name]: 2.5})
    params = mode.params_of(req)
    parts = mode.parts(4.0, params, 3)
    assert parts[:2] == (UNCOND, COND) and parts[2].source is Source.PROMPT and parts[2].variant
    out = mode.combine({UNCOND: uncond, COND: cond, parts[2]: perturbed}, 4.0, params, None)
    torch.testing.assert_close(out, uncond + 4.0 * (cond - uncond) + 2.5 * (cond - perturbed), atol=1e-6, rtol=0)
    # s = 1: no CFG pass, the prompt's prediction plus the step away (diffusers' PAG pipeline without CFG)
    alone = mode.parts(1.0, params, 3)
    assert alone == (COND, parts[2])
    torch.testing.assert_close(mode.combine({COND: cond, parts[2]: perturbed}, 1.0, params, None),
                               cond + 2.5 * (cond - perturbed), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", MODES)
def test_a_perturbed_scale_of_zero_is_cfg_at_two_passes(name):
    req = GenerationRequest(prompt="x", mode=name, steps=4, **{MODES[name]: 0.0})
    assert plan_passes(req) == [2, 2, 2, 2]
    assert _plan(req, 1, 4).parts == (UNCOND, COND)


def test_costs_a_third_pass_and_seg_skips_its_first_step_as_diffusers_guider():
    assert plan_passes(GenerationRequest(prompt="x", mode="pag", steps=4)) == [3, 3, 3, 3]
    assert plan_passes(GenerationRequest(prompt="x", mode="autoguidance", steps=4)) == [3, 3, 3, 3]
    assert plan_passes(GenerationRequest(prompt="x", mode="seg", steps=4)) == [2, 3, 3, 3]
    assert plan_passes(GenerationRequest(prompt="x", mode="pag", steps=4, guidance_scale=1.0)) == [2, 2, 2, 2]


def test_pag_layers_are_flags():
    pag = guidance_mode("pag")
    params = pag.params_of(GenerationRequest(prompt="x", mode="pag", pag_layers=(1.0, 0.0, 1.0)))
    assert pag.parts(5.0, params)[2] == Part(Source.PROMPT, variant="pag:down,up")
    for layers in [(0.5, 1.0, 0.0), (0.0, 0.0, 0.0)]:
        with pytest.raises(RequestError, match="pag_layers"):
            GenerationRequest(prompt="x", mode="pag", pag_layers=layers)


# --- the toy world's weak model -----------------------------------------------------------------------------


def toy_eps(pipe, sample, t, words="red circle", blur=None):
    cond = pipe.encode_prompt(words, device="cpu", do_classifier_free_guidance=False)[0]
    unet = pipe.unet
    if blur is None:
        return unet(sample, t, encoder_hidden_states=cond, return_dict=False)[0]
    with unet.blurred(blur):
        return unet(sample, t, encoder_hidden_states=cond, return_dict=False)[0]


def test_blur_zero_is_the_exact_denoiser_and_the_context_restores_it(toy_pipe):
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor(400.0)
    exact = toy_eps(toy_pipe, sample, t)
    torch.testing.assert_close(toy_eps(toy_pipe, sample, t, blur=0.0), exact, atol=0, rtol=0)
    blurred = toy_eps(toy_pipe, sample, t, blur=WEAK_WIDTH)
    assert (blurred - exact).abs().max() > 1e-2
    torch.testing.assert_close(toy_eps(toy_pipe, sample, t), exact, atol=0, rtol=0)  # the blur is gone again


def test_the_blurred_denoiser_is_the_exact_one_of_the_widened_mixture():
    """Independent of the closed form: E[x0 | x_t] by quadrature over x0 for 1-D data, a mixture of three items
    each N(z_n, w^2), against `ideal_epsilon(width=w)` turned back into x0."""
    items = torch.tensor([[-1.0], [0.3], [2.0]], dtype=torch.float64)
    allowed = torch.ones(1, 3, dtype=torch.bool)
    w = WEAK_WIDTH
    grid = torch.linspace(-8, 8, 40001, dtype=torch.float64)
    prior = sum(torch.exp(-(grid - z) ** 2 / (2 * w**2)) for z in items[:, 0])  # p(x0), up to a constant
    for a in (0.9, 0.5, 0.05):
        alpha = torch.tensor([a], dtype=torch.float64)
        for x_t in (-1.3, 0.2, 1.7):
            like = torch.exp(-(x_t - math.sqrt(a) * grid) ** 2 / (2 * (1 - a)))
            posterior = prior * like
            x0_quadrature = float((grid * posterior).sum() / posterior.sum())
            eps = ideal_epsilon(torch.tensor([[x_t]], dtype=torch.float64), items, allowed, alpha, width=w)
            x0_closed = float((x_t - math.sqrt(1 - a) * eps) / math.sqrt(a))
            assert x0_closed == pytest.approx(x0_quadrature, abs=1e-8), (a, x_t)


def test_the_weak_model_widens_a_model_that_is_already_wide(toy_pipe):
    """Variances add: a toy of width 0.3, blurred by 0.4, is the exact denoiser of width 0.5."""
    from pipeline.models.toy import ToyUNet

    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor(300.0)
    cond = toy_pipe.encode_prompt("red", device="cpu", do_classifier_free_guidance=False)[0]
    wide, wider = ToyUNet(mixture_width=0.3), ToyUNet(mixture_width=0.5)
    with wide.blurred(0.4):
        got = wide(sample, t, encoder_hidden_states=cond, return_dict=False)[0]
    torch.testing.assert_close(got, wider(sample, t, encoder_hidden_states=cond, return_dict=False)[0],
                               atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("mode", ["pag", "seg"])
def test_pag_and_seg_are_refused_in_the_toy_before_any_model_call(toy_pipe, mode):
    req = GenerationRequest(prompt="red circle", mode=mode, steps=3, seeds=(1,), width=64, height=64)
    with pytest.raises(RequestError, match="no attention layers") as error:
        next(generate(toy_pipe, req))
    assert error.value.field == "mode"


def test_whatif_recombines_the_cached_perturbed_pass(toy_pipe):
    """The autoguidance run caches its weak-model prediction; what-if at another autoguidance scale or CFG needs
    no UNet call, and at the run's own settings gives the run's own x0."""
    req = GenerationRequest(prompt="red circle", mode="autoguidance", guidance_scale=3.0, steps=4, seeds=(1, 2),
                            width=64, height=64)
    cache = RunCache(toy_pipe, req)
    events = list(cache.consume(generate(toy_pipe, req, record=True)))
    own = whatif(cache, 2, 3.0)
    torch.testing.assert_close(own.pred_x0, events[1].pred_x0, atol=1e-6, rtol=0)
    assert whatif(cache, 2, 5.0).difference_norm.min() > 0
    assert {"cfg", "autoguidance", "cond_only"} <= set(cache.modes_at(2))
    assert whatif(cache, 2, 3.0, "cfg").difference_norm.min() > 0
    # a CFG run never ran the weak model: what-if cannot make autoguidance of it
    cfg_req = GenerationRequest.from_dict({**req.to_dict(), "mode": "cfg"})
    cfg_cache = RunCache(toy_pipe, cfg_req)
    list(cfg_cache.consume(generate(toy_pipe, cfg_req, record=True)))
    assert "autoguidance" not in cfg_cache.modes_at(2) and "cfg" in cfg_cache.modes_at(2)


def test_at_scale_one_the_plot_says_the_perturbed_pass_replaced_the_baseline():
    from pipeline.loop import unguided_steps

    assert set(unguided_steps(GenerationRequest(prompt="x", mode="pag", steps=3, guidance_scale=1.0)).values()) == {
        "perturbed_only"}
    assert unguided_steps(GenerationRequest(prompt="x", mode="pag", steps=3)) == {}
    assert set(unguided_steps(GenerationRequest(prompt="x", mode="cfg", steps=3, guidance_scale=1.0)).values()) == {
        "scale_one"}


def test_the_variants_on_sdxls_block_layout():
    """SDXL's UNet layout (transformer depths 1, 2, 10; its block names), narrowed so it builds in a second: PAG's
    "mid" picks the mid block's 10 self-attention layers, SEG and the weak model take all 10 of its blocks, and
    each variant changes the prediction and leaves the UNet as it was."""
    from diffusers import UNet2DConditionModel

    from bench.common import SDXL_UNET_CONFIG
    from pipeline.denoiser import enter_variant
    from pipeline.guidance.modes.autoguidance import mid_block_skip
    from pipeline.guidance.modes.pag import stacks
    from pipeline.guidance.modes.seg import mid_block_config

    config = {**SDXL_UNET_CONFIG, "block_out_channels": (32, 64, 64), "attention_head_dim": (2, 2, 2),
              "cross_attention_dim": 32, "norm_num_groups": 8, "addition_time_embed_dim": 4,
              "projection_class_embeddings_input_dim": 6 * 4 + 8, "sample_size": 8}
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    assert stacks(unet, ("mid",)) == {"mid_block.attentions.0.transformer_blocks": list(range(10))}
    assert mid_block_skip(unet).indices == mid_block_config(unet).indices == list(range(10))
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(1, 4, 8, 8, generator=g), torch.tensor(500))
    kwargs = dict(encoder_hidden_states=torch.randn(1, 77, 32, generator=g),
                  added_cond_kwargs={"text_embeds": torch.randn(1, 8, generator=g), "time_ids": torch.ones(1, 6)})
    with torch.no_grad():
        plain = unet(*args, **kwargs).sample
        for variant in ("pag:mid", "seg:9999999.0", "seg:2.0", "autoguidance"):
            with enter_variant(unet, variant):
                assert (unet(*args, **kwargs).sample - plain).abs().max() > 1e-4, variant
        torch.testing.assert_close(unet(*args, **kwargs).sample, plain, atol=0, rtol=0)
