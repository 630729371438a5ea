"""CFG++: Chung et al. (2024, arXiv 2406.08070), manifold-constrained CFG. diffusers ships no CFG++ guider (its
guiders return one prediction, and CFG++ needs two in the scheduler step), so this mode is a step rule.

The clean estimate comes from eps_l = eps_u + l (eps_c - eps_u), l in [0, 1], and the sample is renoised with
eps_u alone. For a first-order step x_next/sqrt(abar_next) = x/sqrt(abar) + (sigma_next - sigma) eps (DDIM with
eta 0, and Euler, which works in these variance-exploding units), this is exactly CFG with the per-step scale

    w_t = l sigma_t / (sigma_t - sigma_next),   sigma = sqrt((1 - abar) / abar),

which is why the same l guides harder with more (smaller) steps. `step_rule` hands the scheduler that CFG
prediction, so one call of `scheduler.step` takes the CFG++ step.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..base import COND, UNCOND, Mode, Params, Predictions, Scale, StepInfo
from .cfg import cfg

ORDER = 130
SCHEDULERS = ("euler", "ddim")  # first-order steps of the form above; eta 0 for DDIM


def equivalent_scale(lam: float, sigma: float, sigma_next: float) -> float:
    """The CFG scale w_t = l sigma_t / (sigma_t - sigma_next) that one CFG++ step at `lam` equals (Chung et al.
    2024, arXiv 2406.08070, written as CFG): the guidance plot's equivalent scale."""
    return lam * sigma / (sigma - sigma_next)


def equivalent_scales(lam: float, sigmas: list[tuple[float, float]]) -> list[float]:
    """w_t of every step, from each step's (sigma, sigma_next) (`pipeline.schedulers.run_sigmas`): the curve a
    schedule plot shows for CFG++ in place of the constant l."""
    return [equivalent_scale(lam, sigma, sigma_next) for sigma, sigma_next in sigmas]


# l is a fraction of the way from eps_u to eps_c, not CFG's s: the page names it, says a CFG scale is refused, and
# plots the CFG scale w_t each step equals
SCALE = Scale("λ", (0.0, 1.0), "λ from 0 to 1 (CFG++'s scale, not CFG's s): 0 is ε_u alone, 1 the conditional "
                               "clean estimate. A CFG scale such as 7.5 is refused, not clamped.", equivalent_scale)


def cfg_pp_step_prediction(guided: Tensor, noise_pred_uncond: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """The prediction a first-order step takes CFG++'s step with: x0 from `guided` (eps_l), renoised with eps_u.
    From x/sqrt(abar) - sigma eps_l + sigma_next eps_u = x/sqrt(abar) + (sigma_next - sigma) eps'."""
    return (sigma * guided - sigma_next * noise_pred_uncond) / (sigma - sigma_next)


def needs(scale: float, params: Params) -> tuple:
    # l = 0 is eps_u for both the estimate and the renoising; l = 1 still renoises with eps_u, so needs it
    return (UNCOND,) if scale == 0.0 else (UNCOND, COND)


def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
    return cfg(preds[COND], preds[UNCOND], scale)  # eps_l: what the clean estimate uses


def step_rule(guided: Tensor, preds: Predictions, params: Params, step: StepInfo) -> Tensor:
    if step.prediction_type != "epsilon":  # the identity above is in eps; a v-prediction model needs its own
        raise ValueError(f"mode: 'cfg_pp' needs an epsilon-prediction model, this one predicts {step.prediction_type}")
    if UNCOND not in preds:  # outside the guidance interval: the conditional prediction alone, as for CFG
        return guided
    return cfg_pp_step_prediction(guided, preds[UNCOND], step.sigma, step.sigma_next)


def check(params: Params) -> tuple[str, str] | None:
    low, high = SCALE.range
    if not low <= params.guidance_scale <= high:
        return "guidance_scale", f"is λ in mode 'cfg_pp' and must be in [{low:g}, {high:g}], " \
                                 f"got {params.guidance_scale:g}"
    if params.scheduler not in SCHEDULERS:
        return "scheduler", f"must be one of {', '.join(SCHEDULERS)} in mode 'cfg_pp' (a first-order step), " \
                            f"got {params.scheduler!r}"
    if params.scheduler == "ddim" and params.eta != 0.0:
        return "eta", f"must be 0 in mode 'cfg_pp' (DDIM's deterministic step), got {params.eta:g}"
    return None


MODE = Mode(
    "cfg_pp", "CFG++ (λ in [0, 1])",
    r"$$\hat x_0 = \hat x_0(\epsilon_u + \lambda\,(\epsilon_c - \epsilon_u)),\quad "
    r"x_{t-1} = \text{renoise}(\hat x_0, \epsilon_u)$$ Chung et al. (2024): the clean estimate is guided, the "
    r"renoising is not. The guidance scale is $\lambda \in [0, 1]$. It equals CFG at "
    r"$\omega_t = \lambda\,\sigma_t / (\sigma_t - \sigma_{t-1})$, so the same $\lambda$ guides harder with more "
    r"steps (the schedule plot shows $\omega_t$). "
    r"A CFG scale such as 7.5 is refused, not clamped: set $\lambda$ from 0 to 1.",
    needs, combine, uses=("scheduler", "eta"), check=check, step_rule=step_rule, scale=SCALE,
)
