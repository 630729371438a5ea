"""Guidance methods beyond plain CFG, wrapping `diffusers.guiders`' module-level functions.

Kept for the names other code imports; each now lives in its mode's file (pipeline/guidance/modes/) and
guidance rescale in pipeline/guidance/combine.py.
"""

from __future__ import annotations

from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

from .guidance.combine import rescale
from .guidance.modes.apg import apg
from .guidance.modes.cfg_zero_star import cfg_zero_star

__all__ = ["MomentumBuffer", "apg", "cfg_zero_star", "rescale"]
