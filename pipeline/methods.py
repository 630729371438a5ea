"""Guidance methods beyond plain CFG, wrapping `diffusers.guiders`' module-level functions.

diffusers' guider classes keep their state in objects set up by its modular pipelines (APG's momentum
buffer is created in `prepare_inputs` at step 0). Our loop owns that state instead: a fresh
`MomentumBuffer` per run, updated only on the steps where APG runs, exactly as the guider does it.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers.guiders import adaptive_projected_guidance_mix as apg_mix_guider
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance
from diffusers.guiders.classifier_free_zero_star_guidance import cfg_zero_star_scale
from diffusers.guiders.guider_utils import rescale_noise_cfg
from diffusers.guiders.tangential_classifier_free_guidance import normalized_guidance as tangential_guidance
import torch
from torch import Tensor

__all__ = ["ApgMixState", "MomentumBuffer", "apg", "apg_mix", "cfg_zero_star", "magnitude_aware", "rescale", "tcfg"]


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


def tcfg(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scale: float) -> Tensor:
    """Tangential CFG (Kwon et al. 2025, arXiv 2503.18137, Algorithm 1): CFG from eps_u filtered by an SVD of
    the 2-row matrix [eps_c; eps_u] per image. eps_u keeps only its component along the first right singular
    vector (the direction both predictions share); the tangential component along the second, which the paper
    finds carries the unconditional prediction's drift away from the data manifold, is dropped."""
    return tangential_guidance(noise_pred_cond, noise_pred_uncond, scale)


def magnitude_aware(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scale: float, alpha: float = 8.0) -> Tensor:
    """MAMBO-G (arXiv 2508.03442): CFG at the per-image scale 1 + (s - 1) exp(-alpha r), where
    r = ||eps_c - eps_u|| / ||eps_u||. A large guidance update (early, high-noise steps) is damped towards the
    conditional prediction; alpha = 0 is plain CFG.

    diffusers' `mambo_guidance` is this formula, but its `torch.norm(x, dim=[1, 2, 3])` (Frobenius over three
    dims) raises on a 4-D prediction under torch 2.13, so the norms are written here as the vector 2-norms that
    the Frobenius norm over those dims is; tests/parity/test_modes_parity.py runs diffusers' own function with
    that one call fixed and finds the same numbers.
    """
    diff = noise_pred_cond - noise_pred_uncond
    dims = tuple(range(1, diff.ndim))
    ratio = torch.linalg.vector_norm(diff, dim=dims, keepdim=True) / torch.linalg.vector_norm(
        noise_pred_uncond, dim=dims, keepdim=True)
    return noise_pred_uncond + (1.0 + (scale - 1.0) * torch.exp(-alpha * ratio)) * diff


@dataclass(slots=True)
class ApgMixState:
    """APG-mix's per-run state: its momentum buffer (None: no momentum) and the 0-based index of the next step
    it combines; diffusers' guider reads the index from `set_state(step=...)`, which our modes are not given."""

    buffer: apg_mix_guider.MomentumBuffer | None
    step: int = 0


def apg_mix(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scale: float, step: int, start_step: int,
            buffer: apg_mix_guider.MomentumBuffer | None, eta: float = 0.0, norm_threshold: float = 10.0) -> Tensor:
    """CFG up to and including 0-based step `start_step`, then adaptive projected guidance (Sadat et al. 2024,
    arXiv 2410.02416): diffusers' `AdaptiveProjectedMixGuidance`, as HunyuanImage 2.1 uses it. The CFG steps
    already feed the momentum buffer, so APG starts from their running average. One scale for both phases."""
    if step <= start_step:
        apg_mix_guider.update_momentum_buffer(noise_pred_cond, noise_pred_uncond, buffer)
        return noise_pred_uncond + scale * (noise_pred_cond - noise_pred_uncond)
    return apg_mix_guider.normalized_guidance(noise_pred_cond, noise_pred_uncond, scale, buffer, eta, norm_threshold)
