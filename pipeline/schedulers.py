"""The samplers we offer, each a diffusers scheduler built from the pipeline's own scheduler config.

`SCHEDULER_TABLE` is each one's one home (label, A1111 name, class, the controls it uses): to add a sampler, add
an entry; the request, PNG metadata and the page read it."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

@dataclass(frozen=True, slots=True)
class Scheduler:
    """One sampler we offer, everything about it in one place: the request's value, the page's label, the name
    A1111 writes in its PNG text, the diffusers class, and which settings it uses."""

    name: str
    label: str  # the page's choice
    a1111: str  # A1111's sampler label (modules/sd_samplers_*.py), for PNG text both ways
    cls: type[SchedulerMixin]
    controls: tuple[str, ...] = ()  # request fields only it reads (DDIM: eta); other schedulers ignore them
    # False: it keeps the previous steps' outputs (multistep), so a run cannot continue from a cached step
    resumable: bool = True


_SCHEDULERS = (
    # Karras et al. 2022, Algorithm 2 (deterministic)
    Scheduler("euler", "Euler (deterministic)", "Euler", EulerDiscreteScheduler),
    # Euler with fresh noise each step (stochastic)
    Scheduler("euler_a", "Euler ancestral (stochastic)", "Euler a", EulerAncestralDiscreteScheduler),
    # Song et al. 2020; eta 0 deterministic, eta 1 DDPM-like
    Scheduler("ddim", "DDIM (eta sets the noise)", "DDIM", DDIMScheduler, controls=("eta",)),
    # DPM-Solver++(2M), Lu et al. 2022
    Scheduler("dpmpp_2m", "DPM++ 2M (deterministic)", "DPM++ 2M", DPMSolverMultistepScheduler, resumable=False),
)
SCHEDULER_TABLE: dict[str, Scheduler] = {entry.name: entry for entry in _SCHEDULERS}
SCHEDULERS: tuple[str, ...] = tuple(SCHEDULER_TABLE)
SCHEDULER_CLASSES: dict[str, type[SchedulerMixin]] = {entry.name: entry.cls for entry in _SCHEDULERS}


def make_scheduler(pipe: StableDiffusionXLPipeline, name: str) -> SchedulerMixin:
    """A fresh scheduler per run: schedulers keep per-run state, so the pipeline's own is never touched."""
    if name not in SCHEDULER_CLASSES:
        raise ValueError(f"scheduler: must be one of {', '.join(SCHEDULER_CLASSES)}, got {name!r}")
    return SCHEDULER_CLASSES[name].from_config(pipe.scheduler.config)


def step_kwargs(scheduler: SchedulerMixin, generators: list[torch.Generator], eta: float) -> dict[str, Any]:
    """`generator` and `eta` go to `scheduler.step` only where its signature takes them (as in diffusers)."""
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generators
    return kwargs


def pred_original_sample(scheduler: SchedulerMixin, output: Any) -> torch.Tensor:
    """The scheduler's clean-latent estimate x0 for the step just taken.

    Euler, Euler ancestral and DDIM return it. DPM-Solver++ does not, but it solves in data-prediction
    form (Lu et al. 2022, arXiv 2211.01095, sec. 4), so the model output it stored for this step is x0.
    """
    x0 = getattr(output, "pred_original_sample", None)
    if x0 is not None:
        return x0
    if isinstance(scheduler, DPMSolverMultistepScheduler) and scheduler.config.algorithm_type in (
        "dpmsolver++",
        "sde-dpmsolver++",
    ):
        return scheduler.model_outputs[-1]
    raise ValueError(f"scheduler: {type(scheduler).__name__} gives no clean-latent estimate for previews")


def step_sigmas(scheduler: SchedulerMixin, timestep: torch.Tensor) -> tuple[float, float]:
    """(sigma at this step, sigma where it lands), sigma = sqrt((1 - alpha_bar) / alpha_bar) (Karras et al. 2022,
    eq. 1): what a mode's step rule reads (CFG++). Call after `scale_model_input`, before `step`.

    Sigma-based schedulers (Euler, Euler ancestral, DPM-Solver++) hold their sigmas; DDIM lands on the timestep
    `num_train_timesteps // num_inference_steps` earlier, or on `final_alpha_cumprod` past the first one.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and hasattr(scheduler, "step_index"):
        if scheduler.step_index is None:
            scheduler._init_step_index(timestep)  # what `step` would do first; Euler did it in scale_model_input
        index = scheduler.step_index
        return float(sigmas[index]), float(sigmas[index + 1])
    alphas = scheduler.alphas_cumprod
    previous = int(timestep) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    a, a_next = float(alphas[int(timestep)]), float(alphas[previous] if previous >= 0 else scheduler.final_alpha_cumprod)
    return ((1 - a) / a) ** 0.5, ((1 - a_next) / a_next) ** 0.5


def run_sigmas(scheduler: SchedulerMixin, steps: int) -> list[tuple[float, float]]:
    """(sigma, sigma_next) of every step of a `steps`-step run of `scheduler` (a fresh one: this sets its
    timesteps), as the loop's step rule sees them (`step_sigmas`): what CFG++'s equivalent CFG scale is drawn
    from."""
    scheduler.set_timesteps(steps)
    sigmas = []
    for t in scheduler.timesteps:
        sigmas.append(step_sigmas(scheduler, t))
        if getattr(scheduler, "step_index", None) is not None:  # sigma-based: where its step() would move on
            scheduler._step_index += 1
    return sigmas
