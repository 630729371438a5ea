"""MAMBO-G: magnitude-aware mitigation for boosted guidance (arXiv 2508.03442) ↔ diffusers
`MagnitudeAwareGuidance(alpha=...)`.

diffusers' module-level `mambo_guidance` is this formula, but its `torch.norm(x, dim=[1, 2, 3])` (Frobenius
over three dims) raises on a 4-D prediction under torch 2.13, so the norms are written here as the vector
2-norms that the Frobenius norm over those dims is; tests/parity/test_modes_parity.py runs diffusers' own
function with that one call fixed and gets the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..base import COND, UNCOND, Mode, Param, Params, Predictions, both_unless_one

ORDER = 110


def magnitude_aware(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scale: float, alpha: float = 8.0) -> Tensor:
    """MAMBO-G (arXiv 2508.03442): CFG at the per-image scale 1 + (s - 1) exp(-alpha r), where
    r = ||eps_c - eps_u|| / ||eps_u||. A large guidance update (early, high-noise steps) is damped towards the
    conditional prediction; alpha = 0 is plain CFG."""
    diff = noise_pred_cond - noise_pred_uncond
    dims = tuple(range(1, diff.ndim))
    ratio = torch.linalg.vector_norm(diff, dim=dims, keepdim=True) / torch.linalg.vector_norm(
        noise_pred_uncond, dim=dims, keepdim=True)
    return noise_pred_uncond + (1.0 + (scale - 1.0) * torch.exp(-alpha * ratio)) * diff


def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
    return magnitude_aware(preds[COND], preds[UNCOND], scale, params.mag_alpha)


MODE = Mode(
    "magnitude_aware", "MAMBO-G (magnitude-aware)",
    r"$$\hat\epsilon = \epsilon_u + s_t\,(\epsilon_c - \epsilon_u),\quad s_t = 1 + (s - 1)\,"
    r"e^{-\alpha\,\lVert \epsilon_c - \epsilon_u \rVert / \lVert \epsilon_u \rVert}$$ MAMBO-G (2025): "
    r"where the guidance update is large next to the baseline, at the first noisy steps, the scale falls "
    r"towards 1; $\alpha = 0$ is plain CFG.",
    both_unless_one, combine,
    params=(Param("mag_alpha", "MAMBO-G alpha", 8.0, (0.0, 100.0), 0.5,
                  "α: how fast the scale falls to 1 as the update grows (0: plain CFG)."),),
)
