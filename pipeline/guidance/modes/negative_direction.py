"""Custom negative direction: CFG whose baseline is the negative prompt's prediction, which is what
diffusers' `negative_prompt` does (`StableDiffusionXLPipeline`, Ho & Salimans 2022 eq. 6 with eps_n for eps_u)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..base import COND, NEGATIVE, Mode, Params, Predictions, two
from .cfg import cfg

ORDER = 30


def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
    """CFG whose baseline is another prompt's prediction: what diffusers' `negative_prompt` does."""
    return cfg(preds[COND], preds[NEGATIVE], scale)


MODE = Mode(
    "negative_direction", "Custom negative direction",
    r"$$\hat\epsilon = \epsilon_n + s\,(\epsilon_c - \epsilon_n)$$ The negative "
    r"prompt's prediction $\epsilon_n$ replaces the baseline: guidance moves towards the prompt and away from it.",
    two(NEGATIVE), combine, reads=("prompt", "negative_prompt"), baseline=NEGATIVE,
    unused=(("uncond", "the negative direction prompt's prediction is the baseline"),),
)
