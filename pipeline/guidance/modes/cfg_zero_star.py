"""CFG-Zero*: Fan et al. (2025, arXiv 2503.18886, eq. 8 and the zero-init of sec. 3.3) ↔ diffusers
`ClassifierFreeZeroStarGuidance`, whose module-level `cfg_zero_star_scale` this calls."""

from __future__ import annotations

from typing import Any

from diffusers.guiders.classifier_free_zero_star_guidance import cfg_zero_star_scale
from torch import Tensor

from ..base import COND, UNCOND, Mode, Param, Params, Predictions, both_unless_one

ORDER = 80


def cfg_zero_star(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scale: float) -> Tensor:
    """CFG-Zero* (Fan et al. 2025, arXiv 2503.18886, eq. 8): CFG from eps_u scaled by the optimal
    s* = <eps_c, eps_u> / ||eps_u||^2, per image. The zero-init steps are the loop's business."""
    alpha = cfg_zero_star_scale(noise_pred_cond.flatten(1), noise_pred_uncond.flatten(1))
    noise_pred_uncond = noise_pred_uncond * alpha.view(-1, *(1,) * (noise_pred_cond.ndim - 1))
    return noise_pred_uncond + scale * (noise_pred_cond - noise_pred_uncond)


def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
    return cfg_zero_star(preds[COND], preds[UNCOND], scale)


def zero_steps(params: Params) -> int:
    return params.zero_init_steps


def check(params: Params) -> tuple[str, str] | None:
    if params.zero_init_steps >= params.steps:
        # every step would predict zero: no UNet pass at all, and the "image" is the starting noise scaled
        return ("zero_init_steps", f"must be less than steps ({params.steps}) in mode 'cfg_zero_star', "
                                   f"got {params.zero_init_steps}: every step would predict zero")
    return None


MODE = Mode(
    "cfg_zero_star", "CFG-Zero*",
    r"$$\hat\epsilon = s^*\epsilon_u + s\,(\epsilon_c - s^*\epsilon_u),\quad "
    r"s^* = \frac{\langle \epsilon_c, \epsilon_u\rangle}{\lVert \epsilon_u \rVert^2}$$ Fan et al. (2025): the "
    r"baseline rescaled to best match the prompt's prediction, and the first steps' prediction set to zero.",
    both_unless_one, combine,
    params=(Param("zero_init_steps", "Zero-init steps", 1, (0, 200), 1,
                  "CFG-Zero*: the first steps predict zero (no UNet pass).", integer=True),),
    zero_steps=zero_steps, check=check,
)
