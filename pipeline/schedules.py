"""Guidance schedules: the guidance scale as a function of the run's progress, kept apart from the modes.

Progress p runs from 0 at the first step to 1 at the last. Outside the guidance interval the scale is 1,
where CFG is exactly the conditional prediction and the loop runs one UNet pass instead of two.
`SCHEDULE_TABLE` is each schedule's one home (label, formula, fields it reads): to add one, add an entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

@dataclass(frozen=True, slots=True)
class Schedule:
    """One guidance schedule, everything about it in one place: the request's value, the page's label, its
    formula in the run's progress p, and the request fields it reads beyond the scale."""

    name: str
    label: str  # the page's choice
    scale_at: Callable[[float, float, float], float]  # (s, p, cutoff) -> the scale at progress p
    uses: tuple[str, ...] = ()  # other request fields it reads (cutoff: guidance_cutoff)


def _constant(scale: float, p: float, cutoff: float) -> float:
    return scale


def _linear(scale: float, p: float, cutoff: float) -> float:
    return scale + (1.0 - scale) * p


def _cosine(scale: float, p: float, cutoff: float) -> float:
    return 1.0 + (scale - 1.0) * 0.5 * (1.0 + math.cos(math.pi * p))


def _cutoff(scale: float, p: float, cutoff: float) -> float:
    return scale if p < cutoff else 1.0


_SCHEDULES = (
    Schedule("constant", "Constant", _constant),
    Schedule("linear", "Linear, down to 1", _linear),
    Schedule("cosine", "Cosine, down to 1", _cosine),
    Schedule("cutoff", "Cutoff: off after a point", _cutoff, uses=("guidance_cutoff",)),
)
SCHEDULE_TABLE: dict[str, Schedule] = {schedule.name: schedule for schedule in _SCHEDULES}
SCHEDULES: tuple[str, ...] = tuple(SCHEDULE_TABLE)


def progress(step_index: int, total: int) -> float:
    """0 at the first step, 1 at the last (0 for a one-step run)."""
    return step_index / (total - 1) if total > 1 else 0.0


def scheduled_scale(schedule: str, scale: float, p: float, cutoff: float = 0.4) -> float:
    """The scale at progress p: `constant` s; `linear` from s down to 1; `cosine` from s down to 1 along a
    half cosine (slow start and end); `cutoff` s until progress `cutoff`, then 1 (the "turn CFG off after
    40% of steps" trick from diffusers' callback docs)."""
    if schedule not in SCHEDULE_TABLE:
        raise ValueError(f"guidance_schedule: must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    return SCHEDULE_TABLE[schedule].scale_at(scale, p, cutoff)


def in_interval(step_index: int, total: int, interval: tuple[float, float]) -> bool:
    """Whether guidance applies at this step: int(start*N) <= i < int(stop*N), as `diffusers.guiders` counts."""
    start, stop = interval
    return int(start * total) <= step_index < int(stop * total)


def guidance_scales(
    scale: float, total: int, schedule: str = "constant", interval: tuple[float, float] = (0.0, 1.0), cutoff: float = 0.4
) -> list[float]:
    """The scale of every step of a run: the schedule inside the interval, 1 (no guidance) outside it."""
    return [
        scheduled_scale(schedule, scale, progress(i, total), cutoff) if in_interval(i, total, interval) else 1.0
        for i in range(total)
    ]
