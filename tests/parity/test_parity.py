"""Parity with diffusers: our loop against `StableDiffusionXLPipeline.__call__` on the same pipeline object.

DESIGN.md, "Parity with diffusers (the oracle)": for the same pipeline, seeds, steps, size and scheduler,
with one CPU generator per seed, every guidance mode must land on the latents and images of the diffusers
call in its table row. The pipeline is `tiny_pipeline` (random weights): the images are noise, but every
number passes through the same text encoders, UNet, scheduler and VAE as a real SDXL run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image
from torch import Tensor

from pipeline import GenerationRequest, generate
from pipeline.schedulers import SCHEDULER_CLASSES

PROMPT = "astronaut in a jungle, cold color palette"
PROMPT_2 = "Van Gogh painting"  # differs from PROMPT, so a mix-up of the two encoders' texts shows
NEGATIVE = "blurry, low contrast"
NEGATIVE_2 = "photograph"
SEEDS = (3, 11, 42)  # one batch; each image has its own generator
WIDTH, HEIGHT = 64, 96  # non-square, so a swapped height and width changes the latent shape
STEPS = 5
SCALE = 5.0

# Direct rows run the same UNet batch in the same order with the same formula as diffusers, so they are
# expected to be bit-exact; measured max |ours - diffusers| over all rows and schedulers: 0.0 (images
# too). The tolerance only leaves room for a future torch or diffusers reordering a reduction.
DIRECT_TOL = dict(atol=1e-5, rtol=1e-5)
# `reversed` stacks [baseline, prompt] where diffusers stacks [prompt, baseline] and computes
# u + s*(u - c) where diffusers computes c + (1+s)*(u - c): equal in exact arithmetic, not in floats.
# Measured max |ours - diffusers| (|latents| up to ~20): euler 9.5e-6, euler_a 1.3e-5, ddim eta 0 2.3e-5,
# ddim eta 0.5 1.8e-5, dpmpp_2m 1.4e-5; images differ by at most 1/255.
REVERSED_TOL = dict(atol=1e-4, rtol=1e-4)
# Images are uint8; a latent difference far below one grey level can still flip a rounding.
IMAGE_MAX_DIFF = 2

DiffusersKwargs = Callable[[StableDiffusionXLPipeline, GenerationRequest], dict[str, Any]]


@dataclass(frozen=True)
class Row:
    """One row of DESIGN.md's parity table: our request fields, and the matching diffusers arguments."""

    id: str
    request: dict[str, Any]
    diffusers_kwargs: DiffusersKwargs
    tol: dict[str, float]


def _texts(req: GenerationRequest) -> dict[str, Any]:
    # diffusers reads None as "same as the first encoder's text"; we read "" that way.
    return {"prompt": req.prompt, "prompt_2": req.prompt_2 or None}


def _cfg(pipe: StableDiffusionXLPipeline, req: GenerationRequest) -> dict[str, Any]:
    return {**_texts(req), "guidance_scale": req.guidance_scale}


def _cfg_empty(pipe: StableDiffusionXLPipeline, req: GenerationRequest) -> dict[str, Any]:
    # diffusers encodes "" (rather than using zeros) whenever negative_prompt is not None.
    return {**_texts(req), "negative_prompt": "", "guidance_scale": req.guidance_scale}


def _negative(pipe: StableDiffusionXLPipeline, req: GenerationRequest) -> dict[str, Any]:
    return {
        **_texts(req),
        "negative_prompt": req.negative_prompt,
        "negative_prompt_2": req.negative_prompt_2 or None,
        "guidance_scale": req.guidance_scale,
    }


def _reversed(pipe: StableDiffusionXLPipeline, req: GenerationRequest) -> dict[str, Any]:
    """Reversed guidance at s is CFG with the roles swapped at 1 + s: the prompt plays the negative."""
    embeds, _, pooled, _ = pipe.encode_prompt(
        req.prompt, req.prompt_2 or None, pipe._execution_device, 1, do_classifier_free_guidance=False
    )
    return {
        "prompt_embeds": torch.zeros_like(embeds),
        "pooled_prompt_embeds": torch.zeros_like(pooled),
        "negative_prompt_embeds": embeds,
        "negative_pooled_prompt_embeds": pooled,
        "guidance_scale": 1.0 + req.guidance_scale,
    }


def _unguided(pipe: StableDiffusionXLPipeline, req: GenerationRequest) -> dict[str, Any]:
    # diffusers at 1.0 skips guidance and runs the prompt alone; cond_only ignores our scale.
    return {**_texts(req), "guidance_scale": 1.0}


ROWS = [
    Row("cfg-zeros", dict(prompt=PROMPT, prompt_2=PROMPT_2, mode="cfg", uncond="zeros"), _cfg, DIRECT_TOL),
    Row("cfg-empty", dict(prompt=PROMPT, mode="cfg", uncond="empty"), _cfg_empty, DIRECT_TOL),
    Row(
        "negative-N-N2",
        dict(
            prompt=PROMPT,
            prompt_2=PROMPT_2,
            mode="negative_direction",
            negative_prompt=NEGATIVE,
            negative_prompt_2=NEGATIVE_2,
        ),
        _negative,
        DIRECT_TOL,
    ),
    Row("negative-N", dict(prompt=PROMPT, mode="negative_direction", negative_prompt=NEGATIVE), _negative, DIRECT_TOL),
    Row(
        "reversed-zeros",
        dict(prompt=PROMPT, prompt_2=PROMPT_2, mode="reversed", uncond="zeros"),
        _reversed,
        REVERSED_TOL,
    ),
    Row("cond_only", dict(prompt=PROMPT, prompt_2=PROMPT_2, mode="cond_only"), _unguided, DIRECT_TOL),
]

# (scheduler, eta): DDIM twice, since eta > 0 draws fresh noise from the generators at every step.
SCHEDULERS = [
    pytest.param("euler", 0.0, id="euler"),
    pytest.param("euler_a", 0.0, id="euler_a"),
    pytest.param("ddim", 0.0, id="ddim-eta0"),
    pytest.param("ddim", 0.5, id="ddim-eta0.5"),
    pytest.param("dpmpp_2m", 0.0, id="dpmpp_2m"),
]


def make_request(row: Row, scheduler: str, eta: float, seeds: tuple[int, ...] = SEEDS) -> GenerationRequest:
    return GenerationRequest(
        **{"guidance_scale": SCALE, **row.request},
        steps=STEPS,
        seeds=seeds,
        width=WIDTH,
        height=HEIGHT,
        scheduler=scheduler,
        eta=eta,
    )


def ours(pipe: StableDiffusionXLPipeline, request: GenerationRequest) -> tuple[Tensor, tuple[Image.Image, ...]]:
    """Final latents (B, 4, H/8, W/8) and images of `generate`."""
    events = list(generate(pipe, request))
    assert len(events) == request.steps and events[-1].is_final
    return events[-1].latents, events[-1].images


def diffusers_pipe(pipe: StableDiffusionXLPipeline, scheduler: str) -> StableDiffusionXLPipeline:
    """A pipeline sharing `pipe`'s models with its own scheduler, built the way we build ours.

    The session fixture's scheduler is left alone: other tests, and `make_scheduler`, read its config.
    """
    copy = StableDiffusionXLPipeline(
        **{**pipe.components, "scheduler": SCHEDULER_CLASSES[scheduler].from_config(pipe.scheduler.config)},
        force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt,
        add_watermarker=False,  # as `tiny_pipeline`; left out, diffusers adds one where the package is installed
    )
    copy.set_progress_bar_config(disable=True)
    return copy


def theirs(pipe: StableDiffusionXLPipeline, row: Row, request: GenerationRequest, output_type: str, **extra: Any) -> Any:
    """The diffusers call of `row`: latents (B, 4, H/8, W/8) for "latent", a list of PIL images for "pil"."""
    return diffusers_pipe(pipe, request.scheduler)(
        **extra,
        **row.diffusers_kwargs(pipe, request),
        num_inference_steps=request.steps,
        width=request.width,
        height=request.height,
        eta=request.eta,
        generator=[torch.Generator("cpu").manual_seed(s) for s in request.seeds],
        num_images_per_prompt=len(request.seeds),
        output_type=output_type,
    ).images


def assert_images_close(
    ours_: tuple[Image.Image, ...], theirs_: list[Image.Image], max_diff: int = IMAGE_MAX_DIFF
) -> None:
    assert len(ours_) == len(theirs_)
    for i, (a, b) in enumerate(zip(ours_, theirs_)):
        assert a.size == b.size == (WIDTH, HEIGHT)
        a_arr, b_arr = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
        diff = int(np.abs(a_arr - b_arr).max())
        assert diff <= max_diff, f"image {i}: max |ours - diffusers| = {diff}/255 > {max_diff}/255"


@pytest.mark.parametrize(("scheduler", "eta"), SCHEDULERS)
@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_latents_match_diffusers(tiny_pipe, row: Row, scheduler: str, eta: float) -> None:
    request = make_request(row, scheduler, eta)
    latents, _ = ours(tiny_pipe, request)
    expected = theirs(tiny_pipe, row, request, output_type="latent")
    assert latents.shape == (len(SEEDS), 4, HEIGHT // 8, WIDTH // 8)
    torch.testing.assert_close(latents, expected, **row.tol)


# Euler's last step lands on its pred_x0 (sigma 0), so the final latents of a run that only copied pred_x0
# would still match there; DDIM's last step does not (alpha_prev = alphas_cumprod[0] < 1), and eta 0.5 adds
# fresh noise from the generators at every step.
IMAGE_SCHEDULERS = [pytest.param("euler", 0.0, id="euler"), pytest.param("ddim", 0.5, id="ddim-eta0.5")]


@pytest.mark.parametrize(("scheduler", "eta"), IMAGE_SCHEDULERS)
@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_images_match_diffusers(tiny_pipe, row: Row, scheduler: str, eta: float) -> None:
    request = make_request(row, scheduler, eta)
    _, images = ours(tiny_pipe, request)
    assert_images_close(images, theirs(tiny_pipe, row, request, output_type="pil"))


def test_diffusers_runs_leave_the_fixture_scheduler_alone(tiny_pipe) -> None:
    scheduler = tiny_pipe.scheduler
    config = dict(scheduler.config)
    theirs(tiny_pipe, ROWS[0], make_request(ROWS[0], "dpmpp_2m", 0.0, seeds=(0,)), output_type="latent")
    assert tiny_pipe.scheduler is scheduler and dict(scheduler.config) == config
