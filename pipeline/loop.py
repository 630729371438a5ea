"""The denoising loop as a generator of per-step events.

Recipe (as in diffusers' `StableDiffusionXLPipeline.__call__`, which is our oracle): build a fresh scheduler
and its timesteps, encode the prompts, draw one seeded noise tensor per image, then for each timestep run the
UNet on the predictions the mode needs ([baseline, conditional] for CFG), combine them as the mode says
(`pipeline.guidance.GUIDANCE_MODES`), and step the scheduler once.

Several requests that share a scheduler, step count and size can run as one batch (`denoise_batch`): each
keeps its own mode, scale, schedule and seeds, and all their UNet passes go through one UNet call per step.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from .conditioning import PromptEmbeds, encode, encode_part
from .decompose import Decomposition, alpha_bar, decompose, pred_x0, x0_difference
from .guidance import (  # noqa: F401 (UNCOND: for callers)
    COND, GUIDANCE_MODES, UNCOND, Mode, Part, StepInfo, combine, guidance_mode, guidance_stats, step_prediction,
)
from .denoiser import Block, Conditioning, Denoiser, Layout, Watcher, execution_device, variant_problem
from .models.toy import is_toy
from .previews import encode_image, final_images
from .request import GenerationRequest, RequestError
from .schedulers import SCHEDULER_TABLE, make_scheduler, pred_original_sample, step_kwargs, step_sigmas
from .schedules import in_interval, progress, scheduled_scale


@dataclass(frozen=True, slots=True)
class StepEvent:
    """What one denoising step produced. Tensors are on the pipeline's device; shapes are per image."""

    step: int  # 1-based
    total: int
    timestep: float
    seeds: tuple[int, ...]
    latents: Tensor  # x_{t-1}, (B, 4, H/f, W/f), f = pipe.vae_scale_factor
    # the clean-latent estimate, (B, 4, H/f, W/f): the preview source. The scheduler's, or where the mode has a step
    # rule (CFG++) the mode's own x0 of its guided prediction, which the scheduler's stepped prediction is not
    pred_x0: Tensor
    guidance_scale: float = 1.0  # the scale used at this step (after schedule and interval)
    unet_passes: int = 1  # predictions computed per image at this step (0, 1, 2, or more: Perp-Neg, weighted)
    guidance_norm: Tensor | None = None  # ||eps_c - eps_u|| per image, (B,); None where one pass ran
    cosine: Tensor | None = None  # cosine(eps_c, eps_u) per image, (B,); None where one pass ran
    # RMS of x0(eps_c) - x0(eps_u) per image, (B,): the guidance vector in clean-image units, which stays bounded
    # as sigma -> 0 (`decompose.x0_difference`); eps_u is the mode's baseline. None where one pass ran.
    guidance_x0: Tensor | None = None
    decomposition: Decomposition | None = None  # only when the request names a `decompose_seed`
    unet_chunks: int = 1  # UNet calls this step's batch ran in: more than 1 where it did not fit at once
    images: tuple[Image.Image, ...] | None = None  # final event only: one full-size image per seed
    record: StepRecord | None = None  # only when the loop is asked to record (`record=True`): what a what-if needs

    @property
    def is_final(self) -> bool:
        return self.step == self.total


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What a step computed beyond its event, for `pipeline.whatif`: recombine it, or continue from it."""

    predictions: dict[Part, Tensor]  # each prediction the plan computed, (B, 4, H/f, W/f) each
    noise_pred: Tensor  # the combined prediction the scheduler stepped with, (B, 4, H/f, W/f)
    generator_states: tuple[Tensor, ...]  # each image's generator after the step: where its noise draws go on


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a run picks up instead of starting: after 1-based step `step`, from these latents and generator states."""

    step: int
    latents: Tensor  # x after step `step`, all requests' rows stacked, (B, 4, H/f, W/f)
    generator_states: tuple[Tensor, ...]  # one per image, in row order


def make_generators(seeds: tuple[int, ...]) -> list[torch.Generator]:
    """One CPU generator per image, so each image's noise depends on its seed alone, not its batch position.

    CPU generators also make a seed's starting noise the same on every device (diffusers' advice).
    """
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


class StepPlan(NamedTuple):
    """What one step of one request computes."""

    parts: tuple[Part, ...]  # the predictions, in UNet batch order (diffusers': [baseline, prompt])
    scale: float  # the guidance scale the step uses
    step: int | None = None  # its 0-based index, which a mode that `takes_step` is told


def _plan(request: GenerationRequest, i: int, total: int) -> StepPlan:
    """Step i's plan: the mode's zero-init steps, then its schedule inside the guidance interval, under the
    settings step i runs with (a forked request changes them part way: `GenerationRequest.forks`)."""
    request = request.settings_at(i)
    mode = guidance_mode(request.mode)
    params = mode.params_of(request)  # all the mode sees of the request
    if i < mode.zero_steps(params):
        return StepPlan((), 0.0, i)  # the prediction is 0, and no UNet pass is needed for it
    if not mode.guided:
        return StepPlan(mode.parts(1.0, params, i), 1.0, i)
    if not in_interval(i, total, request.guidance_interval):
        return StepPlan((COND,), 1.0, i)  # outside the interval: no guidance, the conditional prediction alone
    p = progress(i, total)
    scale = scheduled_scale(request.guidance_schedule, request.guidance_scale, p, request.guidance_cutoff)
    return StepPlan(mode.parts(scale, params, i), scale, i)


def plan_passes(request: GenerationRequest) -> list[int]:
    """UNet passes per image at each step the request takes: what its schedule, interval and mode cost."""
    total = _steps_taken(request)
    return [len(_plan(request, i, total).parts) for i in range(total)]


def _steps_taken(request: GenerationRequest) -> int:
    return request.steps - (img2img_start(request.steps, request.strength) if request.init_image is not None else 0)


def unguided_steps(request: GenerationRequest) -> dict[int, str]:
    """The steps (1-based, as events count them) that predict no prompt-and-baseline pair, so that no guidance
    vector is measured there, each with why: "zero_init" (the mode's first steps predict 0), "one_prediction"
    (the mode runs one prediction), "interval" (outside the guidance interval), "scale_one" (scale 1: the prompt's
    prediction alone), "perturbed_only" (scale 1 in PAG, SEG or autoguidance: the prompt's prediction and its
    perturbed one, no baseline) or "scale_zero" (scale 0: the baseline's alone)."""
    total, why = _steps_taken(request), {}
    for i in range(total):
        settings = request.settings_at(i)
        mode = guidance_mode(settings.mode)
        parts = _plan(request, i, total).parts
        if COND in parts and mode.baseline in parts:
            continue
        if not parts:
            why[i + 1] = "zero_init"
        elif not mode.guided:
            why[i + 1] = "one_prediction"
        elif not in_interval(i, total, settings.guidance_interval):
            why[i + 1] = "interval"
        else:
            perturbed = any(part.variant for part in parts)
            why[i + 1] = "perturbed_only" if perturbed else "scale_one" if COND in parts else "scale_zero"
    return why


@dataclass
class _Lane:
    """One request's share of a batch: its rows, its embeddings by prediction, and its mode's per-run state."""

    request: GenerationRequest
    mode: Mode
    rows: slice
    embeds: dict[Part, PromptEmbeds]  # the prompt's from the start; the others as the plan first needs them
    state: Any  # e.g. APG's momentum buffer

    @property
    def batch(self) -> int:
        return len(self.request.seeds)

    def embedding(self, pipe: StableDiffusionXLPipeline, part: Part) -> PromptEmbeds:
        if part not in self.embeds:
            self.embeds[part] = encode_part(pipe, self.request, part, self.embeds[COND])
        return self.embeds[part]


def _lane(pipe: StableDiffusionXLPipeline, request: GenerationRequest, rows: slice,
          cond: PromptEmbeds | None = None) -> _Lane:
    mode = guidance_mode(request.mode)
    if cond is None:
        cond = encode(pipe, request.prompt, request.prompt_2)
    return _Lane(request, mode, rows, {COND: cond}, mode.new_state(mode.params_of(request)))


def _lanes(pipe: StableDiffusionXLPipeline, requests: Sequence[GenerationRequest]) -> list[_Lane]:
    """Each request's lane, its rows following the previous one's. The prompt is always encoded (the zeros
    baseline takes its shape), once per distinct prompt pair: a distribution-lab batch holds hundreds of
    16-seed requests of one prompt."""
    lanes, start, encoded = [], 0, {}
    for request in requests:
        key = (request.prompt, request.prompt_2)
        if key not in encoded:
            encoded[key] = encode(pipe, *key)
        lanes.append(_lane(pipe, request, slice(start, start + len(request.seeds)), encoded[key]))
        start += len(request.seeds)
    return lanes


def _combine(lane: _Lane, preds: dict[Part, Tensor], scale: float, like: Tensor, step: int | None = None) -> Tensor:
    """`combine` with a lane's own request and per-run state."""
    return combine(lane.request, preds, scale, like, lane.state, step)


@dataclass(frozen=True, slots=True)
class _LaneStep:
    """What one step computed for one lane, before the scheduler steps."""

    noise_pred: Tensor  # (B_lane, 4, H/f, W/f)
    plan: StepPlan
    guidance_norm: Tensor | None
    cosine: Tensor | None
    guidance_x0: Tensor | None
    decomposition: Decomposition | None
    pred_x0: Tensor | None = None  # the mode's own clean estimate where its step rule sets one; else the scheduler's


class _UNetBatch:
    """Every lane's predictions for a step, assembled into one batch for the `Denoiser` (one call per model
    variant: the plain UNet's passes, then each variant's, e.g. PAG's perturbed pass).

    The stacked conditioning of each distinct set of plans is built once and reused: a run has few. `chunks`
    says how many UNet calls the last step took (micro-batching, in the denoiser).
    """

    def __init__(self, pipe: StableDiffusionXLPipeline, lanes: list[_Lane], time_ids: Tensor,
                 chunk: int | None = None, watchers: Sequence[Watcher] = (),
                 denoiser: Denoiser | None = None) -> None:
        if denoiser is not None and watchers:
            raise ValueError("watchers: they look inside a local Denoiser's UNet call; a given denoiser has none")
        self.pipe, self.lanes, self.time_ids = pipe, lanes, time_ids
        self.denoiser = denoiser or Denoiser(pipe, chunk, watchers)
        self.watchers = tuple(watchers)
        self.conditioning: dict[tuple, Conditioning] = {}
        self.chunks = 0

    def _conditioning(self, order: tuple[tuple[int, Part], ...]) -> Conditioning:
        if order not in self.conditioning:
            device = self.denoiser.device
            embeds = [self.lanes[k].embedding(self.pipe, part).repeat(self.lanes[k].batch) for k, part in order]
            self.conditioning[order] = Conditioning(
                torch.cat([e.prompt_embeds for e in embeds]).to(device),
                torch.cat([e.pooled for e in embeds]).to(device),
                self.time_ids.repeat(sum(self.lanes[k].batch for k, _ in order), 1),
                self._adherence(order),
            )
        return self.conditioning[order]

    def _adherence(self, order: tuple[tuple[int, Part], ...]) -> Tensor | None:
        """The toy model's prompt adherence per UNet row, (B,), where a request sets it; None where none does, so
        a real UNet never sees the argument (`_check_adherence` refused it before any model call)."""
        values = [self.lanes[k].request.prompt_adherence for k, _ in order]
        if all(value is None for value in values):
            return None
        default = self.pipe.unet.config.prompt_adherence
        return torch.tensor([default if value is None else value
                             for value, (k, _) in zip(values, order) for _ in range(self.lanes[k].batch)],
                            dtype=torch.float64)

    def _layout(self, group: tuple[tuple[int, Part], ...], plans: list[StepPlan]) -> Layout | None:
        """Which rows of a call hold which lane's part, per seed: what the denoiser's watchers read."""
        if not self.watchers:  # a given denoiser (a Ray Serve replica's) has none
            return None
        starts = itertools.accumulate((self.lanes[k].batch for k, _ in group), initial=0)
        return Layout(plans[0].step, tuple(Block(k, part, self.lanes[k].request.seeds, start)
                                           for (k, part), start in zip(group, starts)))

    def __call__(self, scaled: Tensor, t: Tensor, plans: list[StepPlan]) -> list[dict[Part, Tensor]]:
        """Each lane's predictions by part, each (B_lane, 4, H/f, W/f), from the scaled model input (B, 4, H/f, W/f)."""
        preds: list[dict[Part, Tensor]] = [{} for _ in self.lanes]
        order = tuple((k, part) for k, plan in enumerate(plans) for part in plan.parts)
        self.chunks = 0
        if not order:
            return preds
        for variant in dict.fromkeys(part.variant for _, part in order):  # one call per model variant, in order
            group = tuple((k, part) for k, part in order if part.variant == variant)
            model_input = torch.cat([scaled[self.lanes[k].rows] for k, _ in group])
            noise_all = self.denoiser(model_input, t, self._conditioning(group), variant, self._layout(group, plans))
            self.chunks += self.denoiser.chunks
            for (k, part), chunk in zip(group, noise_all.split([self.lanes[k].batch for k, _ in group])):
                preds[k][part] = chunk
        return preds


def _lane_step(lane: _Lane, plan: StepPlan, settings: GenerationRequest, preds: dict[Part, Tensor], latents: Tensor,
               scaled: Tensor, alpha: float | None, prediction_type: str, step: StepInfo | None = None) -> _LaneStep:
    """Combine one lane's predictions, with the diagnostics its events carry. `noise_pred` is what the scheduler
    steps with: the guided prediction, or what the mode's step rule makes of it (`step` given where one has one)."""
    mode = guidance_mode(settings.mode)
    guided = combine(settings, preds, plan.scale, latents[lane.rows], lane.state, plan.step)
    noise_pred = step_prediction(mode, settings, guided, preds, step)
    baseline, cond = preds.get(mode.baseline), preds.get(COND)
    norm = cosine = gap = decomposition = None
    if baseline is not None and cond is not None:
        norm, cosine = guidance_stats(cond, baseline)
        gap = x0_difference(cond, baseline, alpha, prediction_type)
    seed = lane.request.decompose_seed
    if seed is not None:
        decomposition = decompose(seed, lane.request.seeds.index(seed), scaled[lane.rows], baseline, cond, guided,
                                  alpha, prediction_type)
    own_x0 = None
    if step is not None and mode.step_rule is not None:
        # A step rule changes how the sample is renoised, not the clean estimate: CFG++'s x0 is x0(eps_l) (Chung
        # et al. 2024, arXiv 2406.08070), while the scheduler's, from the stepped prediction, is x0 of CFG at w_t.
        own_x0 = pred_x0(guided, scaled[lane.rows], alpha, prediction_type)
    return _LaneStep(noise_pred, plan, norm, cosine, gap, decomposition, own_x0)


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


def _check_latents_shape(pipe: StableDiffusionXLPipeline, requests: Sequence[GenerationRequest]) -> None:
    first, f, channels = requests[0], pipe.vae_scale_factor, pipe.unet.config.in_channels
    latent_size = (first.height // f, first.width // f)
    for request in requests:
        if request.init_latents is not None and tuple(request.init_latents.shape[-3:]) != (channels, *latent_size):
            raise ValueError(f"init_latents: must have shape (N, {channels}, {latent_size[0]}, {latent_size[1]}) "
                             f"for {first.width}x{first.height}, got {tuple(request.init_latents.shape)}")


def _check_adherence(pipe: StableDiffusionXLPipeline, requests: Sequence[GenerationRequest]) -> None:
    """`prompt_adherence` is a setting of the toy model alone: a real UNet has no such knob (and must never be
    passed it), so a request that sets it for one is refused rather than silently ignored."""
    if not is_toy(pipe):
        for request in requests:
            if request.prompt_adherence is not None:
                raise RequestError("prompt_adherence", "only the toy world's model has it (how well it learned its "
                                                       f"prompts); leave it unset for this model, got "
                                                       f"{request.prompt_adherence!r}")


def _check_variants(pipe: StableDiffusionXLPipeline, requests: Sequence[GenerationRequest]) -> None:
    """A mode whose passes need a model variant this UNet cannot run (PAG and SEG perturb attention layers, which
    the toy's exact denoiser has none of) is refused before any model call, naming the mode and why."""
    for request in requests:
        total = _steps_taken(request)
        # each variant once, with the mode of the first step that asks for it
        variants = {part.variant: i for i in reversed(range(total)) for part in _plan(request, i, total).parts}
        for variant, i in variants.items():
            problem = variant_problem(pipe.unet, variant)
            if problem:
                label = guidance_mode(request.settings_at(i).mode).label
                raise RequestError("mode", f"{label} is not available for this model: {problem}")


def unavailable_modes(pipe: StableDiffusionXLPipeline) -> dict[str, str]:
    """The modes this model cannot run, each with why: those whose guided steps (at their default settings) need a
    model variant its UNet cannot run. In the toy world, PAG and SEG (no attention layers); else none."""
    defaults = GenerationRequest(prompt="x")
    out = {}
    for name, mode in GUIDANCE_MODES.items():
        params = mode.params_of(defaults)
        problems = [variant_problem(pipe.unet, part.variant) for part in mode.parts(2.0, params, 1)]
        problem = next((p for p in problems if p), None)
        if problem:
            out[name] = problem
    return out


def img2img_start(steps: int, strength: float) -> int:
    """The index of the first step an img2img run takes: strength 1 starts at the noisiest step, strength 0
    takes none (diffusers' `StableDiffusionXLImg2ImgPipeline.get_timesteps`)."""
    return steps - min(int(steps * strength), steps)


def _timesteps(pipe: StableDiffusionXLPipeline, request: GenerationRequest) -> tuple[Any, Tensor]:
    """A fresh scheduler, and the timesteps the run takes: img2img skips the first ones, by its strength."""
    scheduler = make_scheduler(pipe, request.scheduler)
    timesteps, _ = retrieve_timesteps(scheduler, request.steps, execution_device(pipe))
    begin = 0
    if request.init_image is not None:
        begin = img2img_start(request.steps, request.strength) * scheduler.order
        timesteps = timesteps[begin:]
    if hasattr(scheduler, "set_begin_index"):  # before add_noise, which finds its sigma from it
        scheduler.set_begin_index(begin)
    return scheduler, timesteps


def _time_ids(pipe: StableDiffusionXLPipeline, request: GenerationRequest, dtype: torch.dtype) -> Tensor:
    """SDXL micro-conditioning: original_size = target_size = (height, width), no crop; diffusers' default
    (Podell et al. 2023, sec. 2.2)."""
    size = (request.height, request.width)
    return pipe._get_add_time_ids(
        size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    ).to(execution_device(pipe))


def _initial_latents(pipe: StableDiffusionXLPipeline, scheduler, lanes: list[_Lane],
                     lane_generators: list[list[torch.Generator]], first_timestep: Tensor | None,
                     dtype: torch.dtype) -> Tensor:
    """Every lane's x_T, stacked: (B, 4, H/f, W/f)."""
    request, f = lanes[0].request, pipe.vae_scale_factor
    size = (pipe.unet.config.in_channels, request.height // f, request.width // f)
    return torch.cat([
        _lane_latents(pipe, scheduler, lane, generators, (lane.batch, *size), first_timestep, dtype)
        for lane, generators in zip(lanes, lane_generators)
    ])


def _lane_latents(pipe, scheduler, lane: _Lane, generators, shape, first_timestep, dtype) -> Tensor:
    """A lane's x_T: seeded noise; or given latents; or its image encoded and noised to the first timestep.

    Per generator the draws come in diffusers' order (img2img: posterior sample, then noise), so each image
    matches the diffusers pipeline and is independent of its batch.
    """
    request, device = lane.request, execution_device(pipe)
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


def _events(lanes: list[_Lane], steps: list[_LaneStep], i: int, total: int, timestep: float, latents: Tensor,
            x0: Tensor, unet_chunks: int, records: list[StepRecord | None]) -> tuple[StepEvent, ...]:
    return tuple(
        StepEvent(
            step=i + 1, total=total, timestep=timestep, seeds=lane.request.seeds, latents=latents[lane.rows],
            pred_x0=x0[lane.rows] if step.pred_x0 is None else step.pred_x0,
            guidance_scale=step.plan.scale, unet_passes=len(step.plan.parts),
            guidance_norm=step.guidance_norm, cosine=step.cosine, guidance_x0=step.guidance_x0,
            decomposition=step.decomposition,
            unet_chunks=unet_chunks, record=record,
        )
        for lane, step, record in zip(lanes, steps, records)
    )


def _records(lanes: list[_Lane], steps: list[_LaneStep], preds: list[dict[Part, Tensor]],
             lane_generators: list[list[torch.Generator]]) -> list[StepRecord]:
    """Each lane's record of the step just taken (`record=True`): a small, explicit hook for pipeline.whatif."""
    return [StepRecord(dict(lane_preds), step.noise_pred, tuple(g.get_state() for g in gens))
            for lane, step, lane_preds, gens in zip(lanes, steps, preds, lane_generators)]


def _resume(scheduler, resume: Resume, lane_generators: list[list[torch.Generator]], total: int) -> None:
    """Put the scheduler and generators where they were after step `resume.step`.

    Euler and Euler ancestral index their sigmas by a step counter that `set_begin_index` sets; DDIM keeps no
    state between steps. DPM-Solver++(2M) keeps the previous steps' outputs, which a resume does not have.
    """
    if not 1 <= resume.step < total:
        raise ValueError(f"resume: step must be from 1 to {total - 1}, got {resume.step}")
    entry = next(e for e in SCHEDULER_TABLE.values() if isinstance(scheduler, e.cls))
    if not entry.resumable:
        resumable = [e.name for e in SCHEDULER_TABLE.values() if e.resumable]
        raise ValueError(f"scheduler: a run can continue from a step with {', '.join(resumable[:-1])} or "
                         f"{resumable[-1]}; {entry.name} keeps the previous steps' outputs")
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index((scheduler.begin_index or 0) + resume.step * scheduler.order)
    generators = [g for gens in lane_generators for g in gens]
    if len(generators) != len(resume.generator_states):
        raise ValueError(f"resume: needs one generator state per image ({len(generators)}), "
                         f"got {len(resume.generator_states)}")
    for generator, state in zip(generators, resume.generator_states):
        generator.set_state(state)


def _step_info(scheduler, t: Tensor, settings: list[GenerationRequest], prediction_type: str) -> StepInfo | None:
    """What a mode's step rule reads about this step; None (and nothing computed) where no lane's mode has one."""
    if all(guidance_mode(lane.mode).step_rule is None for lane in settings):
        return None
    return StepInfo(settings[0].scheduler, *step_sigmas(scheduler, t), prediction_type)


@torch.no_grad()
def denoise_batch(pipe: StableDiffusionXLPipeline, requests: Sequence[GenerationRequest],
                  unet_chunk: int | None = None, *, record: bool = False,
                  resume: Resume | None = None, watchers: Sequence[Watcher] = (),
                  denoiser: Denoiser | None = None) -> Iterator[tuple[StepEvent, ...]]:
    """Run several requests as one batch, yielding one `StepEvent` per request per step. Decodes nothing.

    The requests must share scheduler, steps, size and eta; each image still depends only on its own
    request and seed (one generator per image). `unet_chunk` forces the UNet's micro-batch size (rows per
    call; `CFG_EXPLORER_UNET_CHUNK` does the same for the app); by default it follows the free memory.
    `record=True` puts a `StepRecord` on every event; `resume` starts after a step of an earlier run of the
    same requests instead of at the start. `watchers` look inside each UNet call, told which rows are which
    (e.g. `pipeline.attention.AttentionRecorder`); they change no prediction. `denoiser`: the UNet call to use
    instead of a plain `Denoiser` (anything with its call, `device` and `chunks`: a Ray Serve replica passes one
    that batches rows across runs); it takes no watchers.
    """
    if not requests:
        raise ValueError("requests: need at least one request")
    _check_batchable(requests)
    _check_latents_shape(pipe, requests)  # before any model call
    _check_adherence(pipe, requests)
    _check_variants(pipe, requests)
    first = requests[0]
    scheduler, timesteps = _timesteps(pipe, first)
    total = len(timesteps)
    lanes = _lanes(pipe, requests)
    dtype = lanes[0].embeds[COND].prompt_embeds.dtype
    lane_generators = [make_generators(request.seeds) for request in requests]
    if resume is None:
        latents = _initial_latents(pipe, scheduler, lanes, lane_generators, timesteps[:1] if total else None, dtype)
    else:
        _resume(scheduler, resume, lane_generators, total)
        latents = resume.latents.to(device=execution_device(pipe), dtype=dtype)
    if total == 0:  # img2img at strength 0: nothing to denoise; the final event is the encoded image
        yield tuple(StepEvent(step=0, total=0, timestep=float("nan"), seeds=lane.request.seeds,
                              latents=latents[lane.rows], pred_x0=latents[lane.rows], unet_passes=0) for lane in lanes)
        return

    unet = _UNetBatch(pipe, lanes, _time_ids(pipe, first, dtype), unet_chunk, watchers, denoiser)
    extra = step_kwargs(scheduler, [g for gens in lane_generators for g in gens], first.eta)
    timestep_values = timesteps.tolist()  # one device sync here, not one per step for the events
    prediction_type = scheduler.config.prediction_type
    first_index = 0 if resume is None else resume.step
    for i, t in enumerate(timesteps):
        if i < first_index:
            continue
        plans = [_plan(lane.request, i, total) for lane in lanes]
        scaled = scheduler.scale_model_input(latents, t)  # the variance-preserving model input, (B, 4, H/f, W/f)
        preds = unet(scaled, t, plans)
        alpha = alpha_bar(scheduler, t)  # before step() moves the scheduler's index
        settings = [lane.request.settings_at(i) for lane in lanes]
        info = _step_info(scheduler, t, settings, prediction_type)
        steps = [_lane_step(lane, plan, lane_settings, lane_preds, latents, scaled, alpha, prediction_type, info)
                 for lane, plan, lane_settings, lane_preds in zip(lanes, plans, settings, preds)]
        output = scheduler.step(torch.cat([s.noise_pred for s in steps]), t, latents, **extra)  # once: it keeps state
        records = _records(lanes, steps, preds, lane_generators) if record else [None] * len(lanes)
        latents, x0 = output.prev_sample, pred_original_sample(scheduler, output)
        yield _events(lanes, steps, i, total, float(timestep_values[i]), latents, x0, unet.chunks, records)


def denoise(pipe: StableDiffusionXLPipeline, request: GenerationRequest, *, record: bool = False,
            resume: Resume | None = None, watchers: Sequence[Watcher] = (),
            denoiser: Denoiser | None = None) -> Iterator[StepEvent]:
    """Run one request's denoising loop, yielding one `StepEvent` per step. Decodes nothing."""
    for (event,) in denoise_batch(pipe, [request], record=record, resume=resume, watchers=watchers,
                                  denoiser=denoiser):
        yield event


def generate(pipe: StableDiffusionXLPipeline, request: GenerationRequest, *, record: bool = False,
             resume: Resume | None = None, watchers: Sequence[Watcher] = (),
             denoiser: Denoiser | None = None) -> Iterator[StepEvent]:
    """`denoise`, with the final event carrying one full-size PIL image per seed, in seed order."""
    for event in denoise(pipe, request, record=record, resume=resume, watchers=watchers, denoiser=denoiser):
        if event.is_final:
            event = dataclasses.replace(event, images=tuple(final_images(pipe, event.latents)))
        yield event
