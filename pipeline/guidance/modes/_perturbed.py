"""What PAG, SEG and autoguidance share (not a mode: the file name starts with "_"): guidance away from the
model's own prediction under a perturbed or weakened model, added to CFG as diffusers adds it.

    eps_hat = eps_u + s (eps_c - eps_u) + s_p (eps_c - eps_p)

eps_p is one more UNet pass per step (`Part(Source.PROMPT, variant=...)`): the prompt's prediction under the
variant, which the loop runs as its own denoiser call, micro-batched as the others. At s = 1 the CFG term is
gone and two passes remain (eps_c, eps_p); at s_p = 0 the variant term is gone and the mode is CFG.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from diffusers.models.attention_processor import Attention
from torch import Tensor

from ..base import COND, UNCOND, Params, Part, Predictions, Source, two
from .cfg import cfg


def perturbed_guidance(noise_pred_cond: Tensor, noise_pred_uncond: Tensor | None, noise_pred_perturbed: Tensor,
                       scale: float, perturbed_scale: float) -> Tensor:
    """CFG at `scale` plus `perturbed_scale` times the step away from the perturbed prediction; without eps_u
    (s = 1, one pass fewer) the conditional prediction plus that step. diffusers' StableDiffusionXLPAGPipeline
    (`PAGMixin._apply_perturbed_attention_guidance`) and `SmoothedEnergyGuidance.forward` compute this sum."""
    guided = noise_pred_cond if noise_pred_uncond is None else cfg(noise_pred_cond, noise_pred_uncond, scale)
    return guided + perturbed_scale * (noise_pred_cond - noise_pred_perturbed)


def needs_for(variant: Callable[[Params], str], scale_field: str, skip_first_step: bool = False):
    """A mode's `needs`: [eps_u, eps_c, eps_p] (diffusers' PAG batch order), without eps_u at s = 1, and CFG's
    own passes where its perturbed scale is 0 (or, with `skip_first_step`, at step 0, as SEG's guider does)."""

    def needs(scale: float, params: Params, step: int | None = None) -> tuple[Part, ...]:
        if getattr(params, scale_field) == 0.0 or (skip_first_step and step == 0):
            return two(UNCOND)(scale, params)
        perturbed = Part(Source.PROMPT, variant=variant(params))
        return (COND, perturbed) if scale == 1.0 else (UNCOND, COND, perturbed)

    return needs


def combine_for(scale_field: str):
    """A mode's `combine`: `perturbed_guidance` on whatever passes its `needs` asked for."""

    def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
        perturbed = next((tensor for part, tensor in preds.items() if part.variant), None)
        if perturbed is None:  # perturbed scale 0, or a step the guider skips: CFG
            return cfg(preds[COND], preds[UNCOND], scale)
        return perturbed_guidance(preds[COND], preds.get(UNCOND), perturbed, scale, getattr(params, scale_field))

    return combine


def attention_layers(unet: torch.nn.Module) -> list[tuple[str, Attention]]:
    """The UNet's self-attention layers by name (the `attn1` of each transformer block), as PAG selects them."""
    return [(name, module) for name, module in unet.named_modules()
            if isinstance(module, Attention) and not module.is_cross_attention]


def no_attention(unet: torch.nn.Module) -> str | None:
    """Why a variant that perturbs self-attention cannot run on `unet` (None: it can)."""
    if attention_layers(unet):
        return None
    return ("its denoiser has no attention layers to perturb (the toy world's is the exact denoiser of its data, "
            "computed in closed form)")

