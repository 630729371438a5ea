"""Clean-image estimates from any noise prediction, for the decomposition view.

The scheduler only reports x0 for the guided prediction it steps with. To show what the unconditional and
conditional predictions alone would give, we apply the same conversion to each: with the model input
x (the variance-preserving sample) and alpha_bar_t, eps-prediction gives x0 = (x - sqrt(1 - a) eps) / sqrt(a)
(Ho et al. 2020, eq. 15) and v-prediction gives x0 = sqrt(a) x - sqrt(1 - a) v (Salimans & Ho 2022, sec. 4).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, slots=True)
class Decomposition:
    """One seed's predicted clean latents at one step, each (1, 4, H/f, W/f); None where not computed."""

    seed: int
    uncond: Tensor | None
    cond: Tensor | None
    guided: Tensor


def alpha_bar(scheduler, timestep) -> float:
    """alpha_bar at the step about to be taken. Sigma-based schedulers (Euler, DPM-Solver) may sit between
    training timesteps, so read their current sigma (sigma^2 = (1 - a) / a); else index alphas_cumprod."""
    sigmas, index = getattr(scheduler, "sigmas", None), getattr(scheduler, "step_index", None)
    if sigmas is not None and index is not None:
        sigma = float(sigmas[index])
        return 1.0 / (1.0 + sigma * sigma)
    return float(scheduler.alphas_cumprod[int(timestep)])


def pred_x0(model_output: Tensor, model_input: Tensor, alpha: float, prediction_type: str) -> Tensor:
    """x0 from one model output, given the scaled model input and alpha_bar_t (see the module docstring)."""
    a = torch.tensor(alpha, dtype=torch.float64)
    sqrt_a, sqrt_1ma = a.sqrt().item(), (1 - a).sqrt().item()
    if prediction_type == "epsilon":
        return (model_input - sqrt_1ma * model_output) / sqrt_a
    if prediction_type == "v_prediction":
        return sqrt_a * model_input - sqrt_1ma * model_output
    raise ValueError(f"prediction_type: decomposition supports epsilon and v_prediction, got {prediction_type!r}")


def x0_difference(noise_pred_a: Tensor, noise_pred_b: Tensor, alpha: float, prediction_type: str) -> Tensor:
    """Per image, the root mean square of x0(a) - x0(b): how far apart two predictions of one step put the clean
    image, (B,). x0 is affine in the prediction with the model input's part shared, so that part cancels
    exactly: x0(a) - x0(b) = -sqrt((1 - a) / a) (a - b) for epsilon. In these units the guidance vector stays
    bounded as the noise vanishes, where eps_c - eps_u = -(x0_c - x0_u) / sigma grows without bound."""
    difference = (noise_pred_a - noise_pred_b).flatten(1).double()
    x0 = pred_x0(difference, torch.zeros_like(difference), alpha, prediction_type)
    return x0.pow(2).mean(dim=1).sqrt().float()


def spread(parts: Decomposition) -> float:
    """The largest RMS difference between a step's clean-latent estimates (unconditional, conditional, guided):
    how much its decomposition has to show. In the toy world they agree to 1e-3 by the last step, while the
    first steps, where the picture is decided, differ by ~0.1 to 0.3."""
    present = [t for t in (parts.uncond, parts.cond, parts.guided) if t is not None]
    return max((float((a - b).double().pow(2).mean().sqrt()) for a, b in itertools.combinations(present, 2)),
               default=0.0)


def decompose(seed: int, row: int, model_input: Tensor, uncond: Tensor | None, cond: Tensor | None,
              guided: Tensor, alpha: float, prediction_type: str) -> Decomposition:
    """One image's clean latents as each prediction of a step alone would give them.

    `row` is the image's index in the batch of `model_input` (the scaled model input, (B, 4, H/f, W/f)) and of
    the predictions; `uncond` is the mode's baseline prediction. `alpha` is alpha_bar for this step, read
    before the scheduler steps (see `alpha_bar`).
    """
    x = model_input[row : row + 1]

    def x0(pred: Tensor | None) -> Tensor | None:
        return None if pred is None else pred_x0(pred[row : row + 1], x, alpha, prediction_type)

    return Decomposition(seed, x0(uncond), x0(cond), x0(guided))
