"""Conditional only: the conditional prediction alone, no guidance (diffusers at guidance_scale <= 1)."""

from __future__ import annotations

from ..base import COND, Mode, alone

ORDER = 50

# The conditional prediction alone: what the model does with no guidance (diffusers at s <= 1).
needs, combine = alone(COND)

MODE = Mode(
    "cond_only", "Conditional only",
    r"$$\hat\epsilon = \epsilon_c$$ The conditional prediction alone, no guidance (one UNet "
    r"pass per step). The scale is ignored.",
    needs, combine, guided=False,
    unused=(("guidance_scale", "one prediction, nothing to scale"), ("uncond", "no baseline is computed")),
)
