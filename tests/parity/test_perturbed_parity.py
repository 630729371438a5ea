"""Parity of the perturbed-model modes (issue 22) with diffusers:

    ours                                   diffusers
    pag (s, pag_scale, pag_layers)         StableDiffusionXLPAGPipeline(pag_applied_layers=...)(guidance_scale=s,
                                           pag_scale=...)
    seg (s, seg_scale, seg_blur_sigma)     the modular SDXL pipeline with SmoothedEnergyGuidance(guidance_scale=s,
                                           seg_guidance_scale=..., seg_blur_sigma=..., mid-block config)
    autoguidance (s = 1, auto_scale)       the modular SDXL pipeline with AutoGuidance(guidance_scale=1 + auto_scale,
                                           mid-block LayerSkipConfig), its negative prompt = the prompt

diffusers runs the perturbed rows in the same UNet call as the others (PAG: one batch of 3B with a processor
that perturbs the last third) or one call per condition (modular); we run each variant as its own call. The
same math through differently blocked matmuls: the tolerances below are measured, not assumed.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionXLPAGPipeline
from diffusers.guiders import AutoGuidance, SmoothedEnergyGuidance

from pipeline import GenerationRequest
from pipeline.guidance.modes import autoguidance, seg
from pipeline.schedulers import SCHEDULER_CLASSES
from tests.parity.test_lab_parity import MODULAR_TOL, final_latents, modular_pipe, modular_run, request

__all__ = ["modular_pipe"]  # the fixture

# Measured max |ours - diffusers| on final latents (|latents| up to ~20): PAG 2.0e-5 (pag-5-euler_a), SEG 2.1e-5
# (seg-sigma1.5-euler_a), autoguidance 3.8e-6; all within test_lab_parity's MODULAR_TOL (atol 1e-4, rtol 1e-5).
# SEG without diffusers' plain first step lands 0.067 away, so the first-step rule is what these tests pin.
PAG_TOL = MODULAR_TOL


def pag_pipe(pipe, req: GenerationRequest) -> StableDiffusionXLPAGPipeline:
    layers = [part for part, flag in zip(("down", "mid", "up"), req.pag_layers) if flag]
    copy = StableDiffusionXLPAGPipeline(
        **{**pipe.components, "scheduler": SCHEDULER_CLASSES[req.scheduler].from_config(pipe.scheduler.config)},
        force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt, add_watermarker=False,
        pag_applied_layers=layers)
    copy.set_progress_bar_config(disable=True)
    return copy


def pag_run(pipe, req: GenerationRequest) -> torch.Tensor:
    return pag_pipe(pipe, req)(
        prompt=req.prompt, num_inference_steps=req.steps, width=req.width, height=req.height,
        guidance_scale=req.guidance_scale, pag_scale=req.pag_scale, eta=req.eta,
        generator=[torch.Generator("cpu").manual_seed(s) for s in req.seeds], num_images_per_prompt=len(req.seeds),
        output_type="latent").images


PAG_CASES = [
    pytest.param(request(mode="pag"), "euler", id="pag-defaults-euler"),
    pytest.param(request(mode="pag", pag_scale=5.0, guidance_scale=7.0), "euler_a", id="pag-5-euler_a"),
    pytest.param(request(mode="pag", pag_layers=(1.0, 0.0, 1.0)), "dpmpp_2m", id="pag-down-up-dpmpp_2m"),
    pytest.param(request(mode="pag", guidance_scale=1.0), "euler", id="pag-alone-s1"),
]


@pytest.mark.parametrize("req, scheduler", PAG_CASES)
def test_pag_matches_diffusers_sdxl_pag_pipeline(tiny_pipe, req, scheduler):
    req = GenerationRequest.from_dict({**req.to_dict(), "scheduler": scheduler})
    expected = pag_run(tiny_pipe, req)
    ours = final_latents(tiny_pipe, req)
    torch.testing.assert_close(ours, expected, **PAG_TOL)
    # PAG matters here: the same run without the perturbed term lands far from it
    plain = final_latents(tiny_pipe, GenerationRequest.from_dict({**req.to_dict(), "pag_scale": 0.0}))
    assert (plain - expected).abs().max() > 1e-2


def seg_guider(pipe, req: GenerationRequest) -> SmoothedEnergyGuidance:
    return SmoothedEnergyGuidance(guidance_scale=req.guidance_scale, seg_guidance_scale=req.seg_scale,
                                  seg_blur_sigma=req.seg_blur_sigma,
                                  seg_guidance_config=seg.mid_block_config(pipe.unet))


# Not at s = 1: diffusers' guider then runs [cond, cond_seg] and puts its hooks on only where `is_conditional`
# (count 1 or 3), so its "perturbed" pass is the plain one; `test_seg_alone_is_the_formula` checks ours there.
SEG_CASES = [
    pytest.param(request(mode="seg"), "euler", id="seg-defaults-euler"),  # infinite blur
    pytest.param(request(mode="seg", seg_blur_sigma=1.5, seg_scale=4.0), "euler_a", id="seg-sigma1.5-euler_a"),
    pytest.param(request(mode="seg", guidance_scale=3.0), "dpmpp_2m", id="seg-s3-dpmpp_2m"),
]

_seg_prepare_models = SmoothedEnergyGuidance.prepare_models


def _counted_prepare_models(self, denoiser):
    """SmoothedEnergyGuidance.prepare_models as its siblings (PerturbedAttentionGuidance, SkipLayerGuidance) do
    it: count the batch first. diffusers 0.42.1's never counts, so its hooks never go on and its SEG is CFG."""
    self._count_prepared += 1
    _seg_prepare_models(self, denoiser)


@pytest.fixture
def diffusers_seg_runs(monkeypatch):
    monkeypatch.setattr(SmoothedEnergyGuidance, "prepare_models", _counted_prepare_models)


def test_seg_defaults_are_diffusers():
    guider = SmoothedEnergyGuidance(seg_guidance_layers=0)
    assert (GenerationRequest(prompt="x").seg_scale, GenerationRequest(prompt="x").seg_blur_sigma) == (
        guider.seg_guidance_scale, guider.seg_blur_sigma)


def test_diffusers_seg_needs_the_count_fix(tiny_pipe, modular_pipe):
    """If this fails, diffusers fixed SmoothedEnergyGuidance.prepare_models: drop the `diffusers_seg_runs`
    fixture. Unfixed, the modular pipeline's SEG run is exactly its CFG run."""
    req = request(mode="seg")
    seg_run = modular_run(modular_pipe, tiny_pipe, seg_guider(tiny_pipe, req), req)
    cfg_run = final_latents(tiny_pipe, request(mode="cfg"))
    torch.testing.assert_close(seg_run, cfg_run, **MODULAR_TOL)


@pytest.mark.parametrize("req, scheduler", SEG_CASES)
def test_seg_matches_diffusers_modular_pipeline(tiny_pipe, modular_pipe, diffusers_seg_runs, req, scheduler):
    req = GenerationRequest.from_dict({**req.to_dict(), "scheduler": scheduler})
    expected = modular_run(modular_pipe, tiny_pipe, seg_guider(tiny_pipe, req), req)
    torch.testing.assert_close(final_latents(tiny_pipe, req), expected, **MODULAR_TOL)
    plain = final_latents(tiny_pipe, GenerationRequest.from_dict({**req.to_dict(), "seg_scale": 0.0}))
    assert (plain - expected).abs().max() > 1e-2


AUTO_CASES = [
    pytest.param(request(mode="autoguidance", guidance_scale=1.0), "euler", id="auto-defaults-euler"),
    pytest.param(request(mode="autoguidance", guidance_scale=1.0, auto_scale=3.0), "euler_a", id="auto-3-euler_a"),
    pytest.param(request(mode="autoguidance", guidance_scale=1.0, auto_scale=0.5), "dpmpp_2m", id="auto-0.5-dpmpp_2m"),
]


def modular_autoguidance_run(modular, pipe, req: GenerationRequest) -> torch.Tensor:
    """diffusers' AutoGuidance runs its weak model on the negative prompt's embeddings: the prompt's here."""
    guider = AutoGuidance(guidance_scale=1.0 + req.auto_scale,
                          auto_guidance_config=autoguidance.mid_block_skip(pipe.unet))
    components = {name: part for name, part in pipe.components.items() if part is not None}
    components["scheduler"] = SCHEDULER_CLASSES[req.scheduler].from_config(pipe.scheduler.config)
    modular.update_components(**components, guider=guider)
    return modular(
        prompt=req.prompt, negative_prompt=req.prompt, num_inference_steps=req.steps, width=req.width,
        height=req.height, eta=req.eta, generator=[torch.Generator("cpu").manual_seed(s) for s in req.seeds],
        num_images_per_prompt=len(req.seeds), output="latents",
    )


@pytest.mark.parametrize("req, scheduler", AUTO_CASES)
def test_autoguidance_matches_diffusers_modular_pipeline(tiny_pipe, modular_pipe, req, scheduler):
    req = GenerationRequest.from_dict({**req.to_dict(), "scheduler": scheduler})
    expected = modular_autoguidance_run(modular_pipe, tiny_pipe, req)
    torch.testing.assert_close(final_latents(tiny_pipe, req), expected, **MODULAR_TOL)
    plain = final_latents(tiny_pipe, GenerationRequest.from_dict({**req.to_dict(), "mode": "cond_only"}))
    assert (plain - expected).abs().max() > 1e-2
