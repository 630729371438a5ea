"""The guidance-size plot's words and data: what it measures in each mode, and why it is empty where it is.

It plots the guidance vector in clean-image units, the RMS of x̂₀(ε_c) − x̂₀(ε_u) per step
(`StepEvent.guidance_x0`). The noise-prediction difference ε_c − ε_u is that divided by σ_t, so it grows
without bound as the noise vanishes: in reversed, negative and Perp-Neg modes the last steps reached ~400 and
flattened every other step to zero. In x̂₀ both predictions speak of the same picture, and the size stays
bounded by what images can differ by.
"""

from __future__ import annotations

import math

import pandas as pd

from pipeline.guidance import GUIDANCE_MODES, Source
from pipeline.loop import plan_passes, unguided_steps

from .render import ONE_PREDICTION, mode_label

Y = "guidance"  # the table's column the plot reads
SYMBOLS = {Source.BASELINE: "u", Source.NEGATIVE: "n"}  # as the modes' formulas name the baseline's ε
WHY = {  # why a step predicts no pair (`pipeline.loop.unguided_steps`)
    "zero_init": "the mode's first steps predict zero, with no UNet pass",
    "interval": "outside the guidance interval only ε_c is predicted",
    "scale_one": "at scale 1 (no guidance) only ε_c is predicted",
    "perturbed_only": "at scale 1 this mode predicts ε_c and its perturbed ε̃_c, not ε_u: there is no CFG vector",
    "scale_zero": "at scale 0 only the baseline's ε is predicted",
    "one_prediction": "this mode predicts one ε per step",
}


def pair(mode: str) -> str:
    """The measured pair as the mode's formula writes it, e.g. "x̂₀(ε_c) − x̂₀(ε_n)" for a custom negative."""
    baseline = GUIDANCE_MODES[mode].baseline if mode in GUIDANCE_MODES else None
    symbol = SYMBOLS.get(getattr(baseline, "source", None), "u")
    return f"x̂₀(ε_c) − x̂₀(ε_{symbol})"


def labels(mode: str) -> dict[str, str]:
    """The plot's title and y axis for a run in `mode` (a `gr.update` of the plot takes them)."""
    return {"label": f"Guidance in the clean image: RMS of {pair(mode)} per step",
            "y_title": f"RMS {pair(mode)}"}


def table(norms: dict[int, list[float]], seeds: tuple[int, ...]) -> pd.DataFrame:
    """Long-format table, one line per seed, of the measured steps only: an unmeasured step (or a non-finite
    value) would be a null point, and a table of nulls only gives Vega an infinite extent (a console warning
    per redraw)."""
    rows = [{"step": str(step), Y: float(value), "seed": str(seed)}
            for step in sorted(norms) for value, seed in zip(norms[step], seeds) if math.isfinite(value)]
    return pd.DataFrame(rows, columns=["step", Y, "seed"]).astype({Y: "float64"})


def note(request) -> str:
    """What the plot shows for this run, and why it is empty (or has gaps) where it is."""
    mode = request.mode
    # Where every step has its point the plot's own title says what it measures, and the note stays empty (it
    # takes no room, which keeps the plot within a 1440x900 window); it speaks where the plot alone would mislead.
    what = (f"**{mode_label(mode)}:** the guidance vector's size, measured in the clean image "
            f"(RMS of {pair(mode)} over the latent's values).")
    if mode == "negative_direction":
        what += " ε_n is the negative direction prompt's prediction, the baseline this mode guides from."
    if mode in ONE_PREDICTION:
        return ONE_PREDICTION[mode]
    missing = unguided_steps(request)
    if len(missing) == len(plan_passes(request)):
        return f"{what} **The plot stays empty:** {_reasons(missing)}, at every step of this run: no pair to compare."
    if missing:
        return f"{what} No point at step {_ranges(sorted(missing))}: {_reasons(missing)}."
    return what if mode == "negative_direction" else ""


def _reasons(missing: dict[int, str]) -> str:
    return "; ".join(WHY[why] for why in dict.fromkeys(missing.values()))


def _ranges(steps: list[int]) -> str:
    """"1–3, 7" for [1, 2, 3, 7]."""
    runs, start = [], steps[0]
    for previous, step in zip(steps, steps[1:] + [None]):
        if step is None or step != previous + 1:
            runs.append(f"{start}–{previous}" if previous > start else f"{start}")
            start = step
    return ", ".join(runs)
