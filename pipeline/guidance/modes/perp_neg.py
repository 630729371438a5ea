"""Perp-Neg: Armandpour et al. (2023, arXiv 2304.04968), eq. 7 (the perpendicular negative term)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..base import COND, NEGATIVE, UNCOND, Mode, Param, Params, Part, Predictions, two
from .cfg import cfg

ORDER = 40


def perp_neg(
    noise_pred_cond: Tensor, noise_pred_uncond: Tensor, noise_pred_neg: Tensor, scale: float, neg_scale: float
) -> Tensor:
    """Perp-Neg (Armandpour et al. 2023, arXiv 2304.04968): CFG, minus `neg_scale` times the part of the
    negative direction eps_n - eps_u that is perpendicular to the prompt's guidance eps_c - eps_u.

    The part parallel to the prompt's guidance is dropped, so a negative prompt that shares concepts with the
    prompt no longer cancels them. The projection is per image (over C, H, W), so an image does not depend on
    its batch; where eps_c = eps_u there is no direction to project on, and the whole negative direction is used.
    """
    pos = noise_pred_cond - noise_pred_uncond
    neg = noise_pred_neg - noise_pred_uncond
    # The dot products in float32: an fp16 sum over 4 x 128 x 128 values overflows.
    dot = (neg.flatten(1).float() * pos.flatten(1).float()).sum(dim=1)
    norm2 = pos.flatten(1).float().square().sum(dim=1)
    coef = torch.where(norm2 > 0, dot / norm2, torch.zeros_like(norm2))
    perp = neg - coef.to(pos.dtype).view(-1, *(1,) * (pos.ndim - 1)) * pos
    return noise_pred_uncond + scale * pos - neg_scale * perp


def needs(scale: float, params: Params) -> tuple[Part, ...]:
    if params.perp_neg_scale == 0.0:  # no negative term: plain CFG
        return two(UNCOND)(scale, params)
    return (UNCOND, COND, NEGATIVE)


def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
    if NEGATIVE not in preds:
        return cfg(preds[COND], preds[UNCOND], scale)
    return perp_neg(preds[COND], preds[UNCOND], preds[NEGATIVE], scale, params.perp_neg_scale)


MODE = Mode(
    "perp_neg", "Perp-Neg (perpendicular negative)",
    r"$$\hat\epsilon = \epsilon_u + s\,(\epsilon_c - \epsilon_u) - s_n\,(\epsilon_n - \epsilon_u)_\perp$$ "
    r"Armandpour et al. (2023): only the part of the negative direction $\epsilon_n - \epsilon_u$ that is "
    r"perpendicular to the prompt's guidance $\epsilon_c - \epsilon_u$ is subtracted, so a negative prompt "
    r"that shares concepts with the prompt no longer cancels them. Three UNet passes per step.",
    needs, combine, reads=("prompt", "negative_prompt"),
    params=(Param("perp_neg_scale", "Perp-Neg negative scale", 6.5, (0.0, 50.0), 0.5,
                  "s_n: how hard to push away from the negative prompt. 6.5 matches the weight a negative "
                  "prompt gets in CFG at scale 7.5 (s - 1)."),),
)
