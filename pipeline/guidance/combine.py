"""One step's combination of predictions: the mode's formula, then guidance rescale, then its step rule.

This is the package's per-step rule for every mode; the loop and the what-if recombination both call it.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.guiders.guider_utils import rescale_noise_cfg
from torch import Tensor

from .base import COND, Mode, Predictions, StepInfo
from .table import guidance_mode


def rescale(noise_pred: Tensor, noise_pred_cond: Tensor, phi: float) -> Tensor:
    """Guidance rescale (Lin et al. 2023, arXiv 2305.08891, sec. 3.4): match the guided prediction's std to
    the conditional one's, mixed by phi. diffusers' own function, so phi means what `pipe(guidance_rescale=)` means."""
    if phi == 0.0:
        return noise_pred
    return rescale_noise_cfg(noise_pred, noise_pred_cond, guidance_rescale=phi)


def combine(settings: Any, preds: Predictions, scale: float, like: Tensor, state: Any = None,
            step: int | None = None) -> Tensor:
    """One step's noise prediction, from the predictions its plan computed, under `settings` (a
    GenerationRequest or anything with its mode, guidance_rescale and the mode's own fields). `step`: the
    0-based index of the step, for a mode that `takes_step`.

    No prediction: a zero-init step. One prediction where the mode guides: its formula collapses to it
    (s = 1 or 0, or outside the interval). Otherwise the mode's formula, on its own `Params`, then rescale.
    """
    mode = guidance_mode(settings.mode)
    if not preds:
        return torch.zeros_like(like)
    if mode.guided and len(preds) == 1:
        return next(iter(preds.values()))
    params = mode.params_of(settings)
    noise_pred = mode.combine(preds, scale, params, state, step) if mode.takes_step else \
        mode.combine(preds, scale, params, state)
    if not mode.guided:
        return noise_pred
    return rescale(noise_pred, preds[COND], settings.guidance_rescale)


def step_prediction(mode: Mode, settings: Any, guided: Tensor, preds: Predictions, step: StepInfo | None) -> Tensor:
    """What the scheduler steps with: the guided prediction, or what the mode's step rule makes of it."""
    if mode.step_rule is None or step is None:
        return guided
    return mode.step_rule(guided, preds, mode.params_of(settings), step)
