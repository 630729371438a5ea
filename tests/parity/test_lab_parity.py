"""Parity of the guidance lab with diffusers: guidance rescale against `StableDiffusionXLPipeline.__call__`,
and APG, CFG-Zero* and guidance intervals against the `diffusers.guiders` objects: step by step, over whole
runs of diffusers' own modular SDXL pipeline driven by those guiders, and over runs of a hand-written loop
around them.

The guiders keep state that diffusers' modular pipelines set up: `set_state(step=i, ...)` at every step,
and `prepare_inputs(...)`, which is where APG creates its momentum buffer at step 0. We call
`prepare_inputs({})` with an empty data dict at every step, as a modular pipeline would call it with its
block state: the minimal call that creates the buffer the way diffusers does (we never build it for them).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.guiders import AdaptiveProjectedGuidance, ClassifierFreeGuidance, ClassifierFreeZeroStarGuidance
from diffusers.guiders.guider_utils import BaseGuidance
from diffusers.modular_pipelines import StableDiffusionXLAutoBlocks
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from pipeline import GenerationRequest, generate, methods
from pipeline.loop import COND, UNCOND, _combine, _lane, _plan
from pipeline.schedulers import SCHEDULER_CLASSES, step_kwargs
from tests.parity.test_parity import diffusers_pipe

PROMPT = "astronaut in a jungle, cold color palette"
SEEDS = (3, 11)
WIDTH, HEIGHT = 64, 96  # non-square, as in test_parity
STEPS = 5
# Same UNet batches, in the same [uncond, cond] order, through the same diffusers functions: expected
# bit-exact, and measured max difference 0.0 on every test here that uses it. The tolerance only leaves
# room for a future torch or diffusers reordering a reduction.
EXACT_TOL = dict(atol=1e-5, rtol=1e-5)


def request(**changes) -> GenerationRequest:
    return GenerationRequest(
        **{"prompt": PROMPT, "steps": STEPS, "seeds": SEEDS, "width": WIDTH, "height": HEIGHT, "guidance_scale": 5.0,
           **changes}
    )


def final_latents(pipe: StableDiffusionXLPipeline, req: GenerationRequest) -> Tensor:
    events = list(generate(pipe, req))
    assert len(events) == req.steps
    return events[-1].latents


def random_pairs(n: int, seed: int = 0, shape=(2, 4, 8, 12)) -> list[tuple[Tensor, Tensor]]:
    """(pred_cond, pred_uncond) pairs, each image's ||cond - uncond|| about 27: above the caps tested."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g), torch.randn(shape, generator=g)) for _ in range(n)]


def step_guider(guider: BaseGuidance, i: int, total: int) -> None:
    guider.set_state(step=i, num_inference_steps=total, timestep=torch.tensor(999 - 100 * i))
    guider.prepare_inputs({})  # APG makes its momentum buffer here at step 0 (see the module docstring)


# --- guidance rescale against the pipeline -------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["euler", "euler_a", "dpmpp_2m"])
@pytest.mark.parametrize("phi", [0.0, 0.7])
def test_guidance_rescale_matches_diffusers_pipeline(tiny_pipe, scheduler, phi):
    req = request(mode="cfg", guidance_rescale=phi, scheduler=scheduler)
    ours = final_latents(tiny_pipe, req)
    fixture_scheduler, config = tiny_pipe.scheduler, dict(tiny_pipe.scheduler.config)
    theirs = diffusers_pipe(tiny_pipe, scheduler)(
        prompt=PROMPT,
        guidance_scale=req.guidance_scale,
        guidance_rescale=phi,
        num_inference_steps=STEPS,
        width=WIDTH,
        height=HEIGHT,
        generator=[torch.Generator("cpu").manual_seed(s) for s in SEEDS],
        num_images_per_prompt=len(SEEDS),
        output_type="latent",
    ).images
    assert tiny_pipe.scheduler is fixture_scheduler and dict(tiny_pipe.scheduler.config) == config
    torch.testing.assert_close(ours, theirs, **EXACT_TOL)
    if phi:  # the rescale must have done something, or this test compares two plain CFG runs
        assert (ours - final_latents(tiny_pipe, request(mode="cfg", scheduler=scheduler))).abs().max() > 1e-2


# --- APG --------------------------------------------------------------------------------------------------------

APG_SETTINGS = [
    # (momentum, eta, norm_threshold): the paper's defaults; positive momentum with the parallel part kept;
    # a cap below every update's norm; no cap at all
    pytest.param(-0.5, 0.0, 15.0, id="paper"),
    pytest.param(0.3, 1.0, 15.0, id="momentum+0.3-eta1"),
    pytest.param(-0.5, 0.5, 2.0, id="tight-cap"),
    pytest.param(-0.75, 0.0, 0.0, id="no-cap"),
]


@pytest.mark.parametrize("momentum, eta, threshold", APG_SETTINGS)
def test_apg_matches_diffusers_guider_step_by_step(momentum, eta, threshold):
    scale, total = 5.0, 6
    guider = AdaptiveProjectedGuidance(
        guidance_scale=scale,
        adaptive_projected_guidance_momentum=momentum,
        adaptive_projected_guidance_rescale=threshold,  # diffusers' name for the norm cap
        eta=eta,
    )
    buffer = methods.MomentumBuffer(momentum)  # ours: one per run, as the loop makes it
    no_momentum = []
    for i, (cond, uncond) in enumerate(random_pairs(total)):
        step_guider(guider, i, total)
        assert guider.momentum_buffer is not None
        ours = methods.apg(cond, uncond, scale, buffer, eta=eta, norm_threshold=threshold)
        # exact: the same diffusers function on the same inputs and the same running average
        torch.testing.assert_close(ours, guider.forward(cond, uncond).pred, atol=0, rtol=0)
        no_momentum.append(methods.apg(cond, uncond, scale, None, eta=eta, norm_threshold=threshold))
    # from step 2 on the running average differs from the step's own update, so momentum must show
    assert (ours - no_momentum[-1]).abs().max() > 1e-3


def apg_request(**changes) -> GenerationRequest:
    return request(mode="apg", apg_momentum=-0.5, apg_eta=0.0, apg_norm_threshold=2.0, **changes)


def apg_guider(req: GenerationRequest) -> AdaptiveProjectedGuidance:
    return AdaptiveProjectedGuidance(
        guidance_scale=req.guidance_scale,
        adaptive_projected_guidance_momentum=req.apg_momentum,
        adaptive_projected_guidance_rescale=req.apg_norm_threshold,
        eta=req.apg_eta,
        start=req.guidance_interval[0],
        stop=req.guidance_interval[1],
    )


def zero_star_guider(req: GenerationRequest) -> ClassifierFreeZeroStarGuidance:
    return ClassifierFreeZeroStarGuidance(
        guidance_scale=req.guidance_scale,
        zero_init_steps=req.zero_init_steps,
        start=req.guidance_interval[0],
        stop=req.guidance_interval[1],
    )


def cfg_guider(req: GenerationRequest) -> ClassifierFreeGuidance:
    return ClassifierFreeGuidance(
        guidance_scale=req.guidance_scale,
        guidance_rescale=req.guidance_rescale,
        start=req.guidance_interval[0],
        stop=req.guidance_interval[1],
    )


LANE_CASES = [
    pytest.param(apg_request(), apg_guider, id="apg"),
    # off-interval steps must leave the momentum untouched, as the guider does
    pytest.param(apg_request(guidance_interval=(0.2, 0.7)), apg_guider, id="apg-interval"),
    pytest.param(request(mode="cfg_zero_star", zero_init_steps=2), zero_star_guider, id="zero_star"),
    pytest.param(
        request(mode="cfg_zero_star", zero_init_steps=1, guidance_interval=(0.0, 0.6)),
        zero_star_guider,
        id="zero_star-interval",
    ),
    pytest.param(
        request(mode="cfg", guidance_rescale=0.7, guidance_interval=(0.3, 0.8)), cfg_guider, id="cfg-rescale-interval"
    ),
]


@pytest.mark.parametrize("req, make_guider", LANE_CASES)
def test_loop_step_logic_matches_diffusers_guider(tiny_pipe, req, make_guider):
    """Our per-step plan (which predictions) and combination, against the guider on the same predictions."""
    total = 8
    guider = make_guider(req)
    lane = _lane(tiny_pipe, req, slice(0, 2))
    for i, (cond, uncond) in enumerate(random_pairs(total, seed=1)):
        step_guider(guider, i, total)
        parts, scale, _ = _plan(req, i, total)
        expected = guider.forward(cond, uncond).pred
        if req.mode == "cfg_zero_star" and i < req.zero_init_steps:
            assert parts == ()  # the guider still asks for two predictions here; we skip the UNet
            torch.testing.assert_close(expected, torch.zeros_like(cond), atol=0, rtol=0)
        else:
            assert len(parts) == guider.num_conditions, f"step {i}"
        preds = {part: {COND: cond, UNCOND: uncond}[part] for part in parts}
        ours = _combine(lane, preds, scale, like=cond)
        # Exact, but for the guider's rescale outside the interval: it computes phi*c*(std/std) + (1-phi)*c,
        # which is c only up to one float32 rounding (|c| up to ~5), where we return c itself.
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("step", [1, 3])
def test_cfg_zero_star_matches_diffusers_guider_past_zero_init(step):
    cond, uncond = random_pairs(1, seed=2)[0]
    uncond = 0.6 * cond + 0.8 * uncond  # correlated, so the optimal scale s* is far from 0
    guider = ClassifierFreeZeroStarGuidance(guidance_scale=6.0, zero_init_steps=1)
    step_guider(guider, step, 10)
    # exact: the same s* function, and the same CFG formula on the scaled baseline
    ours = methods.cfg_zero_star(cond, uncond, 6.0)
    torch.testing.assert_close(ours, guider.forward(cond, uncond).pred, atol=0, rtol=0)
    # and it is not plain CFG: s* ~ 0.6 here
    assert (ours - (uncond + 6.0 * (cond - uncond))).abs().max() > 0.1


def test_cfg_zero_star_guider_gives_zeros_in_zero_init():
    cond, uncond = random_pairs(1, seed=3)[0]
    guider = ClassifierFreeZeroStarGuidance(guidance_scale=6.0, zero_init_steps=2)
    req = request(mode="cfg_zero_star", zero_init_steps=2, guidance_scale=6.0)
    for i in range(2):
        step_guider(guider, i, 10)
        assert torch.count_nonzero(guider.forward(cond, uncond).pred) == 0
        assert _plan(req, i, 10)[:2] == ((), 0.0)  # and ours computes nothing at all
    step_guider(guider, 2, 10)
    assert torch.count_nonzero(guider.forward(cond, uncond).pred) > 0
    assert _plan(req, 2, 10) == ((UNCOND, COND), 6.0, 2)


# --- whole runs against a hand loop around the guider ----------------------------------------------------------


def guider_loop(pipe: StableDiffusionXLPipeline, guider: BaseGuidance, req: GenerationRequest) -> Tensor:
    """A plain SDXL loop in diffusers' style, with the guider deciding each step's predictions and result.

    Zeros baseline (SDXL's default), one CPU generator per seed, [uncond, cond] batches as diffusers.
    """
    device = pipe._execution_device
    scheduler = SCHEDULER_CLASSES[req.scheduler].from_config(pipe.scheduler.config)
    scheduler.set_timesteps(req.steps, device=device)
    scheduler.set_begin_index(0)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, None, device, 1, do_classifier_free_guidance=False)
    time_ids = pipe._get_add_time_ids(
        (req.height, req.width), (0, 0), (req.height, req.width), dtype=embeds.dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    )
    batch = len(req.seeds)
    generators = [torch.Generator("cpu").manual_seed(s) for s in req.seeds]
    f = pipe.vae_scale_factor
    latents = randn_tensor((batch, 4, req.height // f, req.width // f), generator=generators, dtype=embeds.dtype)
    latents = latents * scheduler.init_noise_sigma
    extra = step_kwargs(scheduler, generators, req.eta)
    total = len(scheduler.timesteps)
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            step_guider(guider, i, total)
            x = scheduler.scale_model_input(latents, t)
            two = guider.num_conditions == 2
            text = torch.cat([torch.zeros_like(embeds)] * batch * two + [embeds] * batch)
            text_pooled = torch.cat([torch.zeros_like(pooled)] * batch * two + [pooled] * batch)
            out = pipe.unet(
                torch.cat([x] * (1 + two)), t, encoder_hidden_states=text,
                added_cond_kwargs={"text_embeds": text_pooled, "time_ids": time_ids.repeat(len(text), 1)},
                return_dict=False,
            )[0]
            uncond, cond = out.chunk(2) if two else (None, out)
            noise_pred = guider.forward(cond, uncond).pred
            latents = scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
    return latents


RUN_CASES = [
    pytest.param(apg_request(guidance_interval=(0.2, 1.0)), apg_guider, "euler", id="apg-euler"),
    pytest.param(apg_request(), apg_guider, "dpmpp_2m", id="apg-dpmpp_2m"),
    pytest.param(request(mode="cfg_zero_star", zero_init_steps=2), zero_star_guider, "euler", id="zero_star-euler"),
    pytest.param(
        request(mode="cfg_zero_star", zero_init_steps=1), zero_star_guider, "dpmpp_2m", id="zero_star-dpmpp_2m"
    ),
    pytest.param(request(mode="cfg", guidance_interval=(0.0, 0.6)), cfg_guider, "euler_a", id="cfg-interval-euler_a"),
]


@pytest.mark.parametrize("req, make_guider, scheduler", RUN_CASES)
def test_run_matches_a_loop_around_the_diffusers_guider(tiny_pipe, req, make_guider, scheduler):
    req = GenerationRequest.from_dict({**req.to_dict(), "scheduler": scheduler})
    expected = guider_loop(tiny_pipe, make_guider(req), req)
    torch.testing.assert_close(final_latents(tiny_pipe, req), expected, **EXACT_TOL)


# --- whole runs against diffusers' modular SDXL pipeline with the guider as its component ---------------------

# diffusers' modular pipeline runs the UNet once per condition (batch B), where we run [uncond, cond] as
# one batch (2B): the same math through differently blocked matmuls. Measured max |ours - diffusers| on
# final latents (|latents| up to ~20) over the cases below: 2.1e-5 (cfg-interval, euler_a).
MODULAR_TOL = dict(atol=1e-4, rtol=1e-5)


@pytest.fixture(scope="module")
def modular_pipe():
    """diffusers' `StableDiffusionXLModularPipeline` (its default SDXL blocks), given models per test."""
    pipe = StableDiffusionXLAutoBlocks().init_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def modular_run(modular, pipe: StableDiffusionXLPipeline, guider: BaseGuidance, req: GenerationRequest) -> Tensor:
    """Final latents of diffusers' modular pipeline on `pipe`'s models, a fresh scheduler, and `guider`."""
    components = {name: part for name, part in pipe.components.items() if part is not None}
    components["scheduler"] = SCHEDULER_CLASSES[req.scheduler].from_config(pipe.scheduler.config)
    modular.update_components(**components, guider=guider)
    return modular(
        prompt=req.prompt, num_inference_steps=req.steps, width=req.width, height=req.height, eta=req.eta,
        generator=[torch.Generator("cpu").manual_seed(s) for s in req.seeds], num_images_per_prompt=len(req.seeds),
        output="latents",
    )


def assert_matches_modular_pipeline(tiny_pipe, modular_pipe, req: GenerationRequest, make_guider, scheduler: str):
    """Our run of `req` with `scheduler` lands where diffusers' modular SDXL pipeline with the guider lands, and
    the guider matters there: plain CFG at the same scale over the whole run lands far from it."""
    req = GenerationRequest.from_dict({**req.to_dict(), "scheduler": scheduler})
    expected = modular_run(modular_pipe, tiny_pipe, make_guider(req), req)
    torch.testing.assert_close(final_latents(tiny_pipe, req), expected, **MODULAR_TOL)
    plain = final_latents(tiny_pipe, request(guidance_scale=req.guidance_scale, scheduler=scheduler))
    assert (plain - expected).abs().max() > 1e-2


@pytest.mark.parametrize("req, make_guider, scheduler", RUN_CASES)
def test_run_matches_diffusers_modular_pipeline_with_the_guider(tiny_pipe, modular_pipe, req, make_guider, scheduler):
    assert_matches_modular_pipeline(tiny_pipe, modular_pipe, req, make_guider, scheduler)
