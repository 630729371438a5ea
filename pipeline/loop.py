"""The denoising loop as a generator of per-step events.

Recipe (as in diffusers' `StableDiffusionXLPipeline.__call__`, which is our oracle): encode the prompts,
build a fresh scheduler, draw one seeded noise tensor per image, then for each timestep run the UNet on
the predictions the mode needs ([baseline, conditional] for CFG), combine them, and step the scheduler once.

Several requests that share a scheduler, step count and size can run as one batch (`denoise_batch`): each
keeps its own mode, scale, schedule and seeds, and all their UNet passes go through one UNet call per step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import retrieve_timesteps
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import retrieve_latents
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from . import methods
from .conditioning import PromptEmbeds, encode, encode_request
from .decompose import Decomposition, alpha_bar, pred_x0
from .guidance import apply_guidance, guidance_stats, required_predictions, weighted
from .previews import final_images, prepare_vae
from .request import GenerationRequest
from .schedulers import make_scheduler, pred_original_sample, step_kwargs
from .schedules import in_interval, progress, scheduled_scale

UNCOND, COND = "uncond", "cond"


@dataclass(frozen=True, slots=True)
class StepEvent:
    """What one denoising step produced. Tensors are on the pipeline's device; shapes are per image."""

    step: int  # 1-based
    total: int
    timestep: float
    seeds: tuple[int, ...]
    latents: Tensor  # x_{t-1}, (B, 4, H/f, W/f), f = pipe.vae_scale_factor
    pred_x0: Tensor  # the scheduler's clean-latent estimate, (B, 4, H/f, W/f): the preview source
    guidance_scale: float = 1.0  # the scale used at this step (after schedule and interval)
    unet_passes: int = 1  # predictions computed per image at this step (0, 1, 2, or more when weighted)
    guidance_norm: Tensor | None = None  # ||eps_c - eps_u|| per image, (B,); None where one pass ran
    cosine: Tensor | None = None  # cosine(eps_c, eps_u) per image, (B,); None where one pass ran
    decomposition: Decomposition | None = None  # only when the request names a `decompose_seed`
    images: tuple[Image.Image, ...] | None = None  # final event only: one full-size image per seed

    @property
    def is_final(self) -> bool:
        return self.step == self.total


def make_generators(seeds: tuple[int, ...]) -> list[torch.Generator]:
    """One CPU generator per image, so each image's noise depends on its seed alone, not its batch position.

    CPU generators also make a seed's starting noise the same on every device (diffusers' advice).
    """
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


@dataclass
class _Lane:
    """One request's share of a batch: its rows, its embeddings by part name, and its per-run state."""

    request: GenerationRequest
    rows: slice
    embeds: dict[str, PromptEmbeds]
    momentum: methods.MomentumBuffer | None

    @property
    def batch(self) -> int:
        return len(self.request.seeds)


def _lane(pipe: StableDiffusionXLPipeline, request: GenerationRequest, rows: slice) -> _Lane:
    cond, baseline = encode_request(pipe, request)
    embeds = {COND: cond, UNCOND: baseline}
    for k, (text, _) in enumerate(request.weighted_prompts if request.mode == "weighted" else ()):
        embeds[f"w{k}"] = encode(pipe, text)
    # APG's momentum is per run, as the guider's buffer, made afresh at step 0 (its `prepare_inputs`).
    momentum = methods.MomentumBuffer(request.apg_momentum) if request.mode == "apg" and request.apg_momentum else None
    return _Lane(request, rows, embeds, momentum)


def _plan(request: GenerationRequest, i: int, total: int) -> tuple[tuple[str, ...], float]:
    """The predictions step i needs, in diffusers' batch order, and the guidance scale it uses."""
    mode = request.mode
    if mode == "cond_only":
        return (COND,), 1.0
    if mode == "uncond_only":
        return (UNCOND,), 1.0
    if mode == "cfg_zero_star" and i < request.zero_init_steps:
        return (), 0.0  # zero-init: the prediction is 0, and no UNet pass is needed for it
    if mode == "weighted":
        weights = [w for _, w in request.weighted_prompts]
        parts = tuple(f"w{k}" for k, w in enumerate(weights) if w != 0.0)
        # Weights like (0.7, 0.2, 0.1) leave a baseline weight of 1e-16, not 0: no pass is worth that.
        baseline = not math.isclose(request.baseline_weight, 0.0, abs_tol=1e-9)
        return ((UNCOND,) if baseline else ()) + parts, 1.0
    if not in_interval(i, total, request.guidance_interval):
        return (COND,), 1.0  # outside the interval: no guidance, the conditional prediction alone
    scale = scheduled_scale(request.guidance_schedule, request.guidance_scale, progress(i, total), request.guidance_cutoff)
    if mode in ("apg", "cfg_zero_star"):
        return ((COND,) if scale == 1.0 else (UNCOND, COND)), scale
    need_uncond, need_cond = required_predictions(mode, scale)
    return (UNCOND,) * need_uncond + (COND,) * need_cond, scale


def plan_passes(request: GenerationRequest) -> list[int]:
    """UNet passes per image at each step the request takes: what its schedule, interval and mode cost."""
    total = request.steps - (img2img_start(request.steps, request.strength) if request.init_image is not None else 0)
    return [len(_plan(request, i, total)[0]) for i in range(total)]


def _combine(lane: _Lane, preds: dict[str, Tensor], scale: float, like: Tensor) -> Tensor:
    request = lane.request
    cond, uncond = preds.get(COND), preds.get(UNCOND)
    if not preds:
        return torch.zeros_like(like)
    if request.mode == "weighted":
        weights = [w for _, w in request.weighted_prompts]
        used = [(preds[f"w{k}"], w) for k, w in enumerate(weights) if w != 0.0]
        return weighted([p for p, _ in used], [w for _, w in used], uncond)
    if cond is None or uncond is None:
        return apply_guidance(request.mode, cond, uncond, scale)
    if request.mode == "apg":
        noise_pred = methods.apg(cond, uncond, scale, lane.momentum, request.apg_eta, request.apg_norm_threshold)
    elif request.mode == "cfg_zero_star":
        noise_pred = methods.cfg_zero_star(cond, uncond, scale)
    else:
        noise_pred = apply_guidance(request.mode, cond, uncond, scale)
    return methods.rescale(noise_pred, cond, request.guidance_rescale)


def _check_batchable(requests: Sequence[GenerationRequest]) -> None:
    def shared(r: GenerationRequest) -> dict:
        img2img = r.init_image is not None
        return {"scheduler": r.scheduler, "steps": r.steps, "width": r.width, "height": r.height, "eta": r.eta,
                "init_image": img2img, "strength": r.strength if img2img else None}

    first = shared(requests[0])
    for other in map(shared, requests[1:]):
        for name, value in first.items():
            if other[name] != value:
                raise ValueError(f"{name}: requests run as one batch must share it ({value!r} vs {other[name]!r})")


def img2img_start(steps: int, strength: float) -> int:
    """The index of the first step an img2img run takes: strength 1 starts at the noisiest step, strength 0
    takes none (diffusers' `StableDiffusionXLImg2ImgPipeline.get_timesteps`)."""
    return steps - min(int(steps * strength), steps)


@torch.no_grad()
def encode_image(pipe: StableDiffusionXLPipeline, image: Image.Image, width: int, height: int,
                 generators: list[torch.Generator] | None = None) -> Tensor:
    """An image -> UNet latents, one per generator (each draws its own sample from the VAE's posterior, as
    diffusers' img2img does), or the posterior mean when no generator is given. (N, 4, H/f, W/f)."""
    vae = prepare_vae(pipe.vae)
    pixels = pipe.image_processor.preprocess(image, height=height, width=width)
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    encoded = vae.encode(pixels)
    if generators is None:
        latents = retrieve_latents(encoded, sample_mode="argmax")
    else:
        # One encoding serves every seed: the posterior is the same, only the samples differ.
        latents = torch.cat([retrieve_latents(encoded, generator=g) for g in generators])
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents)
        std = torch.tensor(std).view(1, 4, 1, 1).to(latents)
        return (latents - mean) * vae.config.scaling_factor / std
    return latents * vae.config.scaling_factor


def _initial_latents(pipe, scheduler, lane: _Lane, generators, shape, first_timestep, dtype, device) -> Tensor:
    """A lane's x_T: seeded noise; or given latents; or its image encoded and noised to the first timestep.

    Per generator the draws come in diffusers' order (img2img: posterior sample, then noise), so each image
    matches the diffusers pipeline and is independent of its batch.
    """
    request = lane.request
    if request.init_latents is not None:  # its shape was checked before any model call
        latents = request.init_latents.to(device=device, dtype=dtype).expand(shape[0], -1, -1, -1)
        return latents * scheduler.init_noise_sigma
    if request.init_image is not None:
        init = encode_image(pipe, request.init_image, request.width, request.height, generators).to(dtype)
        if first_timestep is None:  # strength 0: no step to take, the image's own latents
            return init
        noise = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
        return scheduler.add_noise(init, noise, first_timestep.repeat(shape[0]))
    return randn_tensor(shape, generator=generators, device=device, dtype=dtype) * scheduler.init_noise_sigma


@torch.no_grad()
def denoise_batch(pipe: StableDiffusionXLPipeline, requests: Sequence[GenerationRequest]) -> Iterator[tuple[StepEvent, ...]]:
    """Run several requests as one batch, yielding one `StepEvent` per request per step. Decodes nothing.

    The requests must share scheduler, steps, size and eta; each image still depends only on its own
    request and seed (one generator per image).
    """
    if not requests:
        raise ValueError("requests: need at least one request")
    _check_batchable(requests)
    first = requests[0]
    f = pipe.vae_scale_factor
    for request in requests:  # shape errors before any model call
        latent_size = (first.height // f, first.width // f)
        if request.init_latents is not None and tuple(request.init_latents.shape[-3:]) != (pipe.unet.config.in_channels, *latent_size):
            raise ValueError(f"init_latents: must have shape (N, {pipe.unet.config.in_channels}, {latent_size[0]}, "
                             f"{latent_size[1]}) for {first.width}x{first.height}, got {tuple(request.init_latents.shape)}")
    device = pipe._execution_device
    scheduler = make_scheduler(pipe, first.scheduler)
    timesteps, _ = retrieve_timesteps(scheduler, first.steps, device)
    begin = 0
    if first.init_image is not None:
        begin = img2img_start(first.steps, first.strength) * scheduler.order
        timesteps = timesteps[begin:]
    if hasattr(scheduler, "set_begin_index"):  # before add_noise, which finds its sigma from it
        scheduler.set_begin_index(begin)
    total = len(timesteps)

    lanes, start = [], 0
    for request in requests:
        lanes.append(_lane(pipe, request, slice(start, start + len(request.seeds))))
        start += len(request.seeds)
    dtype = lanes[0].embeds[COND].prompt_embeds.dtype
    # SDXL micro-conditioning: original_size = target_size = (height, width), no crop; diffusers' default
    # (Podell et al. 2023, sec. 2.2).
    time_ids = pipe._get_add_time_ids(
        (first.height, first.width), (0, 0), (first.height, first.width), dtype=dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    ).to(device)

    lane_generators = [make_generators(request.seeds) for request in requests]
    generators = [g for gens in lane_generators for g in gens]
    first_timestep = timesteps[:1] if total else None
    latents = torch.cat([
        _initial_latents(pipe, scheduler, lane, gens, (lane.batch, pipe.unet.config.in_channels, first.height // f,
                         first.width // f), first_timestep, dtype, device)
        for lane, gens in zip(lanes, lane_generators)
    ])  # (B, 4, H/f, W/f)
    if total == 0:  # img2img at strength 0: nothing to denoise; the final event is the encoded image
        yield tuple(StepEvent(step=0, total=0, timestep=float("nan"), seeds=lane.request.seeds,
                              latents=latents[lane.rows], pred_x0=latents[lane.rows], unet_passes=0) for lane in lanes)
        return
    extra = step_kwargs(scheduler, generators, first.eta)
    timestep_values = timesteps.tolist()  # one device sync here, not one per step for the events
    prediction_type = scheduler.config.prediction_type
    conditioning: dict[tuple, tuple[Tensor, dict[str, Tensor]]] = {}

    for i, t in enumerate(timesteps):
        plans = [_plan(lane.request, i, total) for lane in lanes]
        order = [(k, part) for k, (parts, _) in enumerate(plans) for part in parts]
        scaled = scheduler.scale_model_input(latents, t)  # the variance-preserving model input, (B, 4, h, w)
        preds: list[dict[str, Tensor]] = [{} for _ in lanes]
        if order:
            key = tuple(order)
            if key not in conditioning:  # stacked once per distinct plan, not every step
                embeds = [lanes[k].embeds[part].repeat(lanes[k].batch) for k, part in order]
                conditioning[key] = (
                    torch.cat([e.prompt_embeds for e in embeds]).to(device),
                    {"text_embeds": torch.cat([e.pooled for e in embeds]).to(device),
                     "time_ids": time_ids.repeat(sum(lanes[k].batch for k, _ in order), 1)},
                )
            prompt_embeds, added_cond_kwargs = conditioning[key]
            model_input = torch.cat([scaled[lanes[k].rows] for k, _ in order])
            noise_all = pipe.unet(
                model_input, t, encoder_hidden_states=prompt_embeds, added_cond_kwargs=added_cond_kwargs,
                return_dict=False,
            )[0]
            for (k, part), chunk in zip(order, noise_all.split([lanes[k].batch for k, _ in order])):
                preds[k][part] = chunk  # each (B_lane, 4, h, w)

        noise_preds, extras = [], []
        alpha = None
        for lane, (parts, scale), lane_preds in zip(lanes, plans, preds):
            noise_pred = _combine(lane, lane_preds, scale, latents[lane.rows])
            noise_preds.append(noise_pred)
            norm = cosine = decomposition = None
            if COND in lane_preds and UNCOND in lane_preds:
                norm, cosine = guidance_stats(lane_preds[COND], lane_preds[UNCOND])
            seed = lane.request.decompose_seed
            if seed is not None:
                j = lane.request.seeds.index(seed)
                alpha = alpha_bar(scheduler, t) if alpha is None else alpha  # before step() moves the index
                x = scaled[lane.rows][j : j + 1]

                def x0(pred: Tensor | None) -> Tensor | None:
                    return None if pred is None else pred_x0(pred[j : j + 1], x, alpha, prediction_type)

                decomposition = Decomposition(seed, x0(lane_preds.get(UNCOND)), x0(lane_preds.get(COND)), x0(noise_pred))
            extras.append((scale, len(parts), norm, cosine, decomposition))

        output = scheduler.step(torch.cat(noise_preds), t, latents, **extra)  # once per step: it keeps state
        latents = output.prev_sample
        x0_all = pred_original_sample(scheduler, output)
        yield tuple(
            StepEvent(
                step=i + 1, total=total, timestep=float(timestep_values[i]), seeds=lane.request.seeds,
                latents=latents[lane.rows], pred_x0=x0_all[lane.rows], guidance_scale=scale, unet_passes=passes,
                guidance_norm=norm, cosine=cosine, decomposition=decomposition,
            )
            for lane, (scale, passes, norm, cosine, decomposition) in zip(lanes, extras)
        )


def denoise(pipe: StableDiffusionXLPipeline, request: GenerationRequest) -> Iterator[StepEvent]:
    """Run one request's denoising loop, yielding one `StepEvent` per step. Decodes nothing."""
    for (event,) in denoise_batch(pipe, [request]):
        yield event


def generate(pipe: StableDiffusionXLPipeline, request: GenerationRequest) -> Iterator[StepEvent]:
    """`denoise`, with the final event carrying one full-size PIL image per seed, in seed order."""
    for event in denoise(pipe, request):
        if event.is_final:
            event = dataclasses.replace(event, images=tuple(final_images(pipe, event.latents)))
        yield event
