"""Unconditional only: the baseline prediction alone, the model's unconditional sample."""

from __future__ import annotations

from ..base import UNCOND, Mode, alone

ORDER = 60

# The baseline prediction alone: the model's unconditional sample.
needs, combine = alone(UNCOND)

MODE = Mode(
    "uncond_only", "Unconditional only",
    r"$$\hat\epsilon = \epsilon_u$$ The baseline alone: the model's unconditional sample "
    r"(one UNet pass per step). The prompt and scale are ignored.",
    needs, combine, reads=(), guided=False,
    unused=(("prompt", "only the baseline is predicted"), ("prompt_2", "only the baseline is predicted"),
            ("guidance_scale", "one prediction, nothing to scale")),
)
