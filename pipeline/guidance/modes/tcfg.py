"""TCFG: Tangential Classifier-Free Guidance, Kwon et al. (2025, arXiv 2503.18137, Algorithm 1) ↔ diffusers
`TangentialClassifierFreeGuidance`, whose module-level `normalized_guidance` this calls."""

from __future__ import annotations

from typing import Any

from diffusers.guiders.tangential_classifier_free_guidance import normalized_guidance
from torch import Tensor

from ..base import COND, UNCOND, Mode, Params, Predictions, both_unless_one

ORDER = 100


def tcfg(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scale: float) -> Tensor:
    """Tangential CFG (Kwon et al. 2025, arXiv 2503.18137, Algorithm 1): CFG from eps_u filtered by an SVD of
    the 2-row matrix [eps_c; eps_u] per image. eps_u keeps only its component along the first right singular
    vector (the direction both predictions share); the tangential component along the second, which the paper
    finds carries the unconditional prediction's drift away from the data manifold, is dropped."""
    return normalized_guidance(noise_pred_cond, noise_pred_uncond, scale)


def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
    return tcfg(preds[COND], preds[UNCOND], scale)


MODE = Mode(
    "tcfg", "Tangential CFG (TCFG)",
    r"$$\hat\epsilon = \tilde\epsilon_u + s\,(\epsilon_c - \tilde\epsilon_u),\quad "
    r"\tilde\epsilon_u = v_1 v_1^\top \epsilon_u$$ Kwon et al. (2025): $v_1$ is the first right singular "
    r"vector of the matrix $[\epsilon_c; \epsilon_u]$. The baseline keeps only the direction it shares with the "
    r"prompt's prediction; its tangential part, which pulls samples off the data, is dropped.",
    both_unless_one, combine,
)
