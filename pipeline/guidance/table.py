"""The table of modes, assembled from pipeline/guidance/modes/ (one file per mode, in their ORDER)."""

from __future__ import annotations

from .base import Mode, Param
from .modes import discover

_MODES = discover()
GUIDANCE_MODES: dict[str, Mode] = {mode.name: mode for mode in _MODES}
# Every mode's parameters by name: each is a GenerationRequest field, checked whatever the mode.
MODE_PARAMS: dict[str, Param] = {param.name: param for mode in _MODES for param in mode.params}


def guidance_mode(name: str) -> Mode:
    """The table entry of mode `name`."""
    if name not in GUIDANCE_MODES:
        raise ValueError(f"mode: must be one of {', '.join(GUIDANCE_MODES)}, got {name!r}")
    return GUIDANCE_MODES[name]
