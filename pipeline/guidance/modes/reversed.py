"""Reversed guidance: CFG pointed away from the prompt (CFG with the two predictions' roles swapped)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..base import COND, UNCOND, Mode, Params, Part, Predictions

ORDER = 20


def reversed_cfg(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scale: float) -> Tensor:
    """Guidance pointed away from the prompt: eps_u + s*(eps_u - eps_c).

    Algebraically this is CFG with the roles of the two predictions swapped at scale 1 + s, which is how the
    parity tests reproduce it with diffusers.
    """
    return noise_pred_uncond + scale * (noise_pred_uncond - noise_pred_cond)


def needs(scale: float, params: Params) -> tuple[Part, ...]:
    return (UNCOND,) if scale == 0.0 else (UNCOND, COND)


def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
    return reversed_cfg(preds[COND], preds[UNCOND], scale)


MODE = Mode(
    "reversed", "Reversed guidance",
    r"$$\hat\epsilon = \epsilon_u + s\,(\epsilon_u - \epsilon_c)$$ The same step, pointed away "
    r"from the prompt: what the image looks like when guidance pushes against it.",
    needs, combine,
)
