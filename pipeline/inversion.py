"""DDIM inversion: run the deterministic DDIM ODE backwards, from a clean image to the noise that DDIM
(eta 0) maps back onto it (Song et al. 2020, sec. 4.3; Mokady et al. 2022 on why guidance breaks it).

The inverse steps evaluate the model at the *next* (noisier) timestep from the current latent, an
approximation that vanishes as the steps get small: reconstruction improves with more steps, and degrades
under strong guidance, where the guided ODE is far less smooth.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from diffusers import DDIMInverseScheduler, StableDiffusionXLPipeline
from PIL import Image
from torch import Tensor

from .conditioning import PromptEmbeds, encode
from .denoiser import Conditioning, Denoiser, execution_device
from .guidance import cfg
from .loop import generate
from .previews import encode_image
from .request import GUIDANCE_SCALE_RANGE, MAX_INIT_IMAGE_SIDE, SIZE_MULTIPLE, SIZE_RANGE, STEPS_RANGE, GenerationRequest, RequestError


@dataclass(frozen=True, slots=True)
class Inversion:
    noise: Tensor  # x_T, (1, 4, H/f, W/f): start DDIM (eta 0) here to get the image back
    latents: Tensor  # the image's clean latents x_0, (1, 4, H/f, W/f)
    request: GenerationRequest  # the DDIM request that maps `noise` back onto the image


@dataclass(frozen=True, slots=True)
class Reconstruction:
    steps: int
    guidance_scale: float
    image: Image.Image
    psnr: float  # dB, against the input image at the same size
    latent_mse: float  # between the reconstruction's final latents and the image's latents


def _check(image: Image.Image | None, steps: int, guidance_scale: float, width: int, height: int) -> None:
    if image is None:
        raise RequestError("image", "an image is needed to invert")
    if not isinstance(image, Image.Image):
        raise RequestError("image", f"must be a PIL image, got {type(image).__name__}")
    if max(image.size) > MAX_INIT_IMAGE_SIDE:
        raise RequestError("image", f"must be at most {MAX_INIT_IMAGE_SIDE} px on each side, got {image.width}x{image.height}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not STEPS_RANGE[0] <= steps <= STEPS_RANGE[1]:
        raise RequestError("steps", f"must be an integer from {STEPS_RANGE[0]} to {STEPS_RANGE[1]}, got {steps!r}")
    lo, hi = GUIDANCE_SCALE_RANGE
    if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or not lo <= guidance_scale <= hi:
        raise RequestError("guidance_scale", f"must be a finite number from {lo} to {hi}, got {guidance_scale!r}")
    for name, value in (("width", width), ("height", height)):
        if not SIZE_RANGE[0] <= value <= SIZE_RANGE[1] or value % SIZE_MULTIPLE:
            raise RequestError(name, f"must be a multiple of {SIZE_MULTIPLE} from {SIZE_RANGE[0]} to {SIZE_RANGE[1]}, got {value}")


def fit_size(image: Image.Image, max_side: int = 1024) -> tuple[int, int]:
    """The image's size scaled to at most `max_side` and rounded down to multiples of 8, at least 64."""
    scale = min(1.0, max_side / max(image.size))
    return tuple(max(SIZE_RANGE[0], int(side * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE) for side in image.size)


@torch.no_grad()
def invert(
    pipe: StableDiffusionXLPipeline,
    image: Image.Image | None,
    prompt: str,
    steps: int = 50,
    guidance_scale: float = 1.0,
    prompt_2: str = "",
    width: int | None = None,
    height: int | None = None,
) -> Inversion:
    """The latent noise that DDIM (eta 0, same prompt, steps and guidance) maps back onto `image`.

    Guidance uses SDXL's zeros baseline; at scale 1 a single conditional pass runs per step.
    """
    if isinstance(image, Image.Image) and (width is None or height is None):
        fit_width, fit_height = fit_size(image)
        width, height = width or fit_width, height or fit_height
    _check(image, steps, guidance_scale, width or 0, height or 0)
    # Built before any model call, so a field the request refuses (an empty prompt) costs no UNet pass;
    # the inverted noise is filled in at the end.
    request = GenerationRequest(
        prompt=prompt, prompt_2=prompt_2, mode="cfg" if guidance_scale != 1.0 else "cond_only",
        guidance_scale=guidance_scale, steps=steps, seeds=(0,), width=width, height=height, scheduler="ddim",
        eta=0.0,
    )
    accepted = inspect.signature(DDIMInverseScheduler.__init__).parameters  # drop Euler-only keys quietly
    scheduler = DDIMInverseScheduler.from_config({k: v for k, v in pipe.scheduler.config.items() if k in accepted})
    denoiser = Denoiser(pipe)
    scheduler.set_timesteps(steps, device=denoiser.device)

    x0 = encode_image(pipe, image, width, height)  # the posterior mean: inversion should be deterministic
    conditioning = _conditioning(pipe, encode(pipe, prompt, prompt_2), guidance_scale != 1.0, width, height)
    latents = x0.to(conditioning.prompt_embeds.dtype)
    passes = len(conditioning.prompt_embeds)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * passes), t)
        noise_pred = denoiser(model_input, t, conditioning)
        if passes == 2:
            noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)
            noise_pred = cfg(noise_pred_cond, noise_pred_uncond, guidance_scale)
        latents = scheduler.step(noise_pred, t, latents).prev_sample

    return Inversion(noise=latents, latents=x0, request=dataclasses.replace(request, init_latents=latents))


def _conditioning(pipe: StableDiffusionXLPipeline, cond: PromptEmbeds, guided: bool, width: int,
                  height: int) -> Conditioning:
    """[zeros, prompt] rows where guided (diffusers' batch order), else the prompt's row alone."""
    parts = [cond.zeros(), cond] if guided else [cond]
    device = execution_device(pipe)
    prompt_embeds = torch.cat([p.prompt_embeds for p in parts]).to(device)
    time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=prompt_embeds.dtype,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    return Conditioning(prompt_embeds, torch.cat([p.pooled for p in parts]).to(device),
                        time_ids.to(device).repeat(len(parts), 1))


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB between two same-size RGB images (inf when identical)."""
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB").resize(a.size), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def reconstruct(pipe: StableDiffusionXLPipeline, image: Image.Image, inversion: Inversion) -> Reconstruction:
    """Generate from the inverted noise with DDIM (eta 0) and measure how close it comes back."""
    final = list(generate(pipe, inversion.request))[-1]
    r = inversion.request
    original = image.convert("RGB").resize((r.width, r.height), Image.Resampling.BICUBIC)
    latent_mse = float(torch.mean((final.latents.float() - inversion.latents.float()) ** 2))
    return Reconstruction(r.steps, r.guidance_scale, final.images[0], psnr(original, final.images[0]), latent_mse)


def error_curve(
    pipe: StableDiffusionXLPipeline,
    image: Image.Image,
    prompt: str,
    steps: tuple[int, ...] = (5, 10, 25, 50),
    guidance_scales: tuple[float, ...] = (1.0, 7.5),
    width: int | None = None,
    height: int | None = None,
) -> Iterator[Reconstruction]:
    """Invert and reconstruct at each (steps, scale): the error falls with steps, and rises with guidance."""
    for scale in guidance_scales:
        for n in steps:
            yield reconstruct(pipe, image, invert(pipe, image, prompt, n, scale, width=width, height=height))


def noise_statistics(inversion: Inversion) -> tuple[float, float]:
    """(standard deviation of the recovered x_T, its correlation with the image's latents x_0).

    Fresh Gaussian noise has a standard deviation of 1 and no correlation with any image. DDIM inversion adds no
    randomness, so what it recovers is a deterministic function of the image and can keep its structure (Parmar et
    al. 2023, pix2pix-zero, regularise inverted noise towards Gaussian statistics for this reason).
    """
    noise, latents = inversion.noise.flatten().double(), inversion.latents.flatten().double()
    std = float(noise.std())
    correlation = float(torch.corrcoef(torch.stack([noise, latents]))[0, 1]) if latents.std() > 0 else 0.0
    return std, correlation
