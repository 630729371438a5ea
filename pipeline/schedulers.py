"""The samplers we offer, each a diffusers scheduler built from the pipeline's own scheduler config."""

from __future__ import annotations

import inspect
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

SCHEDULER_CLASSES: dict[str, type[SchedulerMixin]] = {
    "euler": EulerDiscreteScheduler,  # Karras et al. 2022, Algorithm 2 (deterministic)
    "euler_a": EulerAncestralDiscreteScheduler,  # Euler with fresh noise each step (stochastic)
    "ddim": DDIMScheduler,  # Song et al. 2020; eta 0 deterministic, eta 1 DDPM-like
    "dpmpp_2m": DPMSolverMultistepScheduler,  # DPM-Solver++(2M), Lu et al. 2022
}


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
