"""The denoising loop as a generator of per-step events.

Recipe (as in diffusers' `StableDiffusionXLPipeline.__call__`, which is our oracle): encode the prompts,
build a fresh scheduler, draw one seeded noise tensor per image, then for each timestep run the UNet on
[baseline, conditional] (or only the one prediction the mode needs), combine, and step the scheduler once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from .conditioning import PromptEmbeds, encode_request
from .guidance import apply_guidance, guidance_stats, required_predictions
from .previews import final_images
from .request import GenerationRequest
from .schedulers import make_scheduler, pred_original_sample, step_kwargs


@dataclass(frozen=True, slots=True)
class StepEvent:
    """What one denoising step produced. Tensors are on the pipeline's device; shapes are per image."""

    step: int  # 1-based
    total: int
    timestep: float
    seeds: tuple[int, ...]
    latents: Tensor  # x_{t-1}, (B, 4, H/f, W/f), f = pipe.vae_scale_factor
    pred_x0: Tensor  # the scheduler's clean-latent estimate, (B, 4, H/f, W/f): the preview source
    guidance_norm: Tensor | None = None  # ||eps_c - eps_u|| per image, (B,); None where one pass ran
    cosine: Tensor | None = None  # cosine(eps_c, eps_u) per image, (B,); None where one pass ran
    images: tuple[Image.Image, ...] | None = None  # final event only: one full-size image per seed

    @property
    def is_final(self) -> bool:
        return self.step == self.total


def make_generators(seeds: tuple[int, ...]) -> list[torch.Generator]:
    """One CPU generator per image, so each image's noise depends on its seed alone, not its batch position.

    CPU generators also make a seed's starting noise the same on every device (diffusers' advice).
    """
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def _unet_inputs(
    pipe: StableDiffusionXLPipeline, parts: list[PromptEmbeds], batch: int, height: int, width: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """Text embeddings and SDXL's micro-conditioning for the stacked passes, (len(parts) * B, ...)."""
    device = pipe._execution_device
    prompt_embeds = torch.cat([p.repeat(batch).prompt_embeds for p in parts]).to(device)
    text_embeds = torch.cat([p.repeat(batch).pooled for p in parts]).to(device)
    # original_size = target_size = (height, width) with no crop: diffusers' default micro-conditioning
    # (Podell et al. 2023, sec. 2.2).
    time_ids = pipe._get_add_time_ids(
        (height, width),
        (0, 0),
        (height, width),
        dtype=prompt_embeds.dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    )
    time_ids = time_ids.to(device).repeat(len(parts) * batch, 1)
    return prompt_embeds, {"text_embeds": text_embeds, "time_ids": time_ids}


@torch.no_grad()
def denoise(pipe: StableDiffusionXLPipeline, request: GenerationRequest) -> Iterator[StepEvent]:
    """Run the request's denoising loop, yielding one `StepEvent` per step. Decodes nothing."""
    device = pipe._execution_device
    batch = len(request.seeds)
    scheduler = make_scheduler(pipe, request.scheduler)
    timesteps, _ = retrieve_timesteps(scheduler, request.steps, device)
    total = len(timesteps)

    cond, baseline = encode_request(pipe, request)
    need_uncond, need_cond = required_predictions(request.mode, request.guidance_scale)
    # [baseline, conditional]: diffusers' batch order, which keeps our numbers bit-identical to its own.
    parts = [baseline] * need_uncond + [cond] * need_cond
    prompt_embeds, added_cond_kwargs = _unet_inputs(pipe, parts, batch, request.height, request.width)

    generators = make_generators(request.seeds)
    f = pipe.vae_scale_factor
    shape = (batch, pipe.unet.config.in_channels, request.height // f, request.width // f)
    latents = randn_tensor(shape, generator=generators, device=device, dtype=prompt_embeds.dtype)
    latents = latents * scheduler.init_noise_sigma  # (B, 4, H/f, W/f)
    extra = step_kwargs(scheduler, generators, request.eta)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)

    for i, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(torch.cat([latents] * len(parts)), t)
        noise_pred_all = pipe.unet(
            model_input, t, encoder_hidden_states=prompt_embeds, added_cond_kwargs=added_cond_kwargs, return_dict=False
        )[0]
        chunks = noise_pred_all.chunk(len(parts))  # each (B, 4, H/f, W/f)
        noise_pred_uncond = chunks[0] if need_uncond else None
        noise_pred_cond = chunks[-1] if need_cond else None
        noise_pred = apply_guidance(request.mode, noise_pred_cond, noise_pred_uncond, request.guidance_scale)

        norm = cosine = None
        if need_uncond and need_cond:
            norm, cosine = guidance_stats(noise_pred_cond, noise_pred_uncond)

        output = scheduler.step(noise_pred, t, latents, **extra)  # once per step: schedulers keep state
        latents = output.prev_sample
        yield StepEvent(
            step=i + 1,
            total=total,
            timestep=float(t),
            seeds=request.seeds,
            latents=latents,
            pred_x0=pred_original_sample(scheduler, output),
            guidance_norm=norm,
            cosine=cosine,
        )


def generate(pipe: StableDiffusionXLPipeline, request: GenerationRequest) -> Iterator[StepEvent]:
    """`denoise`, with the final event carrying one full-size PIL image per seed, in seed order."""
    for event in denoise(pipe, request):
        if event.is_final:
            event = dataclasses.replace(event, images=tuple(final_images(pipe, event.latents)))
        yield event
