"""Guidance: each mode's formula and table entry (one file per mode in `modes/`), the table assembled from
them, and the per-step combination the loop and what-if share.

One scale convention everywhere: diffusers'/Imagen's `s`, where s = 1 means no guidance. Shapes are
(B, 4, H/f, W/f) throughout.

Layout:
- `base.py`: what a mode is made of (`Mode`, `Param`, `Params`, `Part`, `StepInfo`, `StepRule`).
- `modes/<name>.py`: one mode each: formula, needs, combine, parameters, table entry (`MODE`), `ORDER`.
  To add a mode, add a file there (modes/__init__.py says what it holds) and its test; nothing else.
- `table.py`: `GUIDANCE_MODES`, `MODE_PARAMS`, `guidance_mode`, assembled from `modes/`.
- `combine.py`: one step's combination (formula, rescale, step rule).

This package never imports `pipeline.request`: the request imports the table to add each mode's parameters
as fields, and a mode sees only its own `Params`, never the request.
"""

from __future__ import annotations

from .base import (
    COND,
    NEGATIVE,
    RUN_FIELDS,
    UNCOND,
    Combine,
    Mode,
    Param,
    Params,
    Part,
    Predictions,
    Source,
    StepInfo,
    StepRule,
    guidance_stats,
    weighted_part,
)
from .combine import combine, rescale, step_prediction
from .modes.apg import apg
from .modes.cfg import cfg
from .modes.cfg_zero_star import cfg_zero_star
from .modes.perp_neg import perp_neg
from .modes.reversed import reversed_cfg
from .modes.weighted import weighted
from .table import GUIDANCE_MODES, MODE_PARAMS, guidance_mode

__all__ = [
    "COND", "NEGATIVE", "RUN_FIELDS", "UNCOND", "Combine", "Mode", "Param", "Params", "Part", "Predictions",
    "Source", "StepInfo", "StepRule", "guidance_stats", "weighted_part", "combine", "rescale", "step_prediction",
    "apg", "cfg", "cfg_zero_star", "perp_neg", "reversed_cfg", "weighted",
    "GUIDANCE_MODES", "MODE_PARAMS", "guidance_mode",
]
