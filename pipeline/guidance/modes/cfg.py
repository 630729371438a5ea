"""Standard CFG: Ho & Salimans (2022, arXiv 2207.12598, eq. 6) ↔ diffusers `ClassifierFreeGuidance`."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..base import COND, UNCOND, Mode, Params, Predictions, two

ORDER = 10  # its place in the table, the page's choices and the API's list


def cfg(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6); scale 1 returns the conditional prediction."""
    return noise_pred_uncond + scale * (noise_pred_cond - noise_pred_uncond)


def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
    return cfg(preds[COND], preds[UNCOND], scale)


MODE = Mode(
    "cfg", "Standard CFG",
    r"$$\hat\epsilon = \epsilon_u + s\,(\epsilon_c - \epsilon_u)$$ Ho & Salimans (2022): step from the "
    r"baseline towards the prompt, $s$ times as far. $s = 1$ is the plain conditional model.",
    two(UNCOND), combine,
)
