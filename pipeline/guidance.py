"""Guidance modes as pure functions of noise predictions.

One scale convention everywhere: diffusers'/Imagen's `s`, where s = 1 means no guidance. Every mode has
the signature `(noise_pred_cond, noise_pred_uncond, scale) -> Tensor`; shapes are (B, 4, H/f, W/f).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

GuidanceFn = Callable[[Tensor, Tensor, float], Tensor]


def cfg(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6); scale 1 returns the conditional prediction."""
    return noise_pred_uncond + scale * (noise_pred_cond - noise_pred_uncond)


def reversed_cfg(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scale: float) -> Tensor:
    """Guidance pointed away from the prompt: eps_u + s*(eps_u - eps_c).

    Algebraically this is CFG with the roles of the two predictions swapped at scale 1 + s, which is how the
    parity tests reproduce it with diffusers.
    """
    return noise_pred_uncond + scale * (noise_pred_uncond - noise_pred_cond)


def cond_only(noise_pred_cond: Tensor, noise_pred_uncond: Tensor | None, scale: float) -> Tensor:
    """The conditional prediction alone: what the model does with no guidance (diffusers at s <= 1)."""
    return noise_pred_cond


def uncond_only(noise_pred_cond: Tensor | None, noise_pred_uncond: Tensor, scale: float) -> Tensor:
    """The baseline prediction alone: the model's unconditional sample."""
    return noise_pred_uncond


# negative_direction is CFG whose baseline is another prompt's prediction (conditioning swaps the
# embeddings), the same trick diffusers' `negative_prompt` uses.
GUIDANCE_FUNCTIONS: dict[str, GuidanceFn] = {
    "cfg": cfg,
    "reversed": reversed_cfg,
    "negative_direction": cfg,
    "cond_only": cond_only,
    "uncond_only": uncond_only,
}


def required_predictions(mode: str, scale: float) -> tuple[bool, bool]:
    """Which UNet predictions a step needs, as (uncond, cond).

    Where the formula collapses to one prediction, the other is never computed: one UNet pass instead of
    two. CFG at s = 1 is exactly the conditional prediction and at s = 0 exactly the baseline.
    """
    if mode == "cond_only":
        return False, True
    if mode == "uncond_only":
        return True, False
    if mode in ("cfg", "negative_direction"):
        if scale == 1.0:
            return False, True
        if scale == 0.0:
            return True, False
        return True, True
    if mode == "reversed":
        if scale == 0.0:
            return True, False
        return True, True
    raise ValueError(f"mode: unknown guidance mode {mode!r}")


def apply_guidance(mode: str, noise_pred_cond: Tensor | None, noise_pred_uncond: Tensor | None, scale: float) -> Tensor:
    """Combine the predictions of one step. A single computed prediction is returned as it is."""
    if noise_pred_uncond is None:
        return noise_pred_cond
    if noise_pred_cond is None:
        return noise_pred_uncond
    return GUIDANCE_FUNCTIONS[mode](noise_pred_cond, noise_pred_uncond, scale)


def guidance_stats(noise_pred_cond: Tensor, noise_pred_uncond: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image size of the guidance vector ||eps_c - eps_u|| and cosine(eps_c, eps_u), each (B,)."""
    cond = noise_pred_cond.flatten(1).float()
    uncond = noise_pred_uncond.flatten(1).float()
    norm = (cond - uncond).norm(dim=1)
    cosine = torch.nn.functional.cosine_similarity(cond, uncond, dim=1)
    return norm, cosine


def weighted(noise_preds: list[Tensor], weights: list[float], noise_pred_uncond: Tensor | None) -> Tensor:
    """Weighted prompts (Crowson's `cfg_sample`): sum_i w_i eps_i + (1 - sum_i w_i) eps_u.

    One prompt at weight w is exactly CFG at scale w. The baseline may be None when its weight is 0.
    """
    baseline_weight = 1.0 - sum(weights)
    result = noise_pred_uncond * baseline_weight if noise_pred_uncond is not None else 0.0  # None: weight ~0
    for noise_pred, weight in zip(noise_preds, weights):
        result = result + weight * noise_pred
    return result
