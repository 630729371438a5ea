"""Guidance methods beyond plain CFG, wrapping `diffusers.guiders`' module-level functions.

diffusers' guider classes keep their state in objects set up by its modular pipelines (APG's momentum
buffer is created in `prepare_inputs` at step 0). Our loop owns that state instead: a fresh
`MomentumBuffer` per run, updated only on the steps where APG runs, exactly as the guider does it.
"""

from __future__ import annotations

from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance
from diffusers.guiders.classifier_free_zero_star_guidance import cfg_zero_star_scale
from diffusers.guiders.guider_utils import rescale_noise_cfg
from torch import Tensor

__all__ = ["MomentumBuffer", "apg", "cfg_zero_star", "rescale"]


def apg(
    noise_pred_cond: Tensor,
    noise_pred_uncond: Tensor,
    scale: float,
    momentum_buffer: MomentumBuffer | None = None,
    eta: float = 0.0,
    norm_threshold: float = 15.0,
) -> Tensor:
    """Adaptive projected guidance (Sadat et al. 2024, arXiv 2410.02416, Algorithm 1): the CFG update with
    its component parallel to eps_c scaled by `eta`, its norm capped, and negative momentum over steps."""
    return normalized_guidance(noise_pred_cond, noise_pred_uncond, scale, momentum_buffer, eta, norm_threshold)


def cfg_zero_star(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scale: float) -> Tensor:
    """CFG-Zero* (Fan et al. 2025, arXiv 2503.18886, eq. 8): CFG from eps_u scaled by the optimal
    s* = <eps_c, eps_u> / ||eps_u||^2, per image. The zero-init steps are the loop's business."""
    alpha = cfg_zero_star_scale(noise_pred_cond.flatten(1), noise_pred_uncond.flatten(1))
    noise_pred_uncond = noise_pred_uncond * alpha.view(-1, *(1,) * (noise_pred_cond.ndim - 1))
    return noise_pred_uncond + scale * (noise_pred_cond - noise_pred_uncond)


def rescale(noise_pred: Tensor, noise_pred_cond: Tensor, phi: float) -> Tensor:
    """Guidance rescale (Lin et al. 2023, arXiv 2305.08891, sec. 3.4): match the guided prediction's std to
    the conditional one's, mixed by phi. diffusers' own function, so phi means what `pipe(guidance_rescale=)` means."""
    if phi == 0.0:
        return noise_pred
    return rescale_noise_cfg(noise_pred, noise_pred_cond, guidance_rescale=phi)
