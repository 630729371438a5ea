"""Unconditional only: the baseline prediction alone, the model's unconditional sample."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..base import UNCOND, Mode, Params, Part, Predictions

ORDER = 60


def needs(scale: float, params: Params) -> tuple[Part, ...]:
    return (UNCOND,)


def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
    """The baseline prediction alone: the model's unconditional sample."""
    return preds[UNCOND]


MODE = Mode(
    "uncond_only", "Unconditional only",
    r"$$\hat\epsilon = \epsilon_u$$ The baseline alone: the model's unconditional sample "
    r"(one UNet pass per step). The prompt and scale are ignored.",
    needs, combine, reads=(), guided=False,
)
