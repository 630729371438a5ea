"""Conditional only: the conditional prediction alone, no guidance (diffusers at guidance_scale <= 1)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..base import COND, Mode, Params, Part, Predictions

ORDER = 50


def needs(scale: float, params: Params) -> tuple[Part, ...]:
    return (COND,)


def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
    """The conditional prediction alone: what the model does with no guidance (diffusers at s <= 1)."""
    return preds[COND]


MODE = Mode(
    "cond_only", "Conditional only",
    r"$$\hat\epsilon = \epsilon_c$$ The conditional prediction alone, no guidance (one UNet "
    r"pass per step). The scale is ignored.",
    needs, combine, guided=False,
)
