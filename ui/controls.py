"""The Explore tab's controls: each one's label, kind and allowed values, and how a value is read strictly.

One source for what the page shows and what the API accepts. Ranges and choices come from `pipeline`'s
constants. Values arrive from three places (the browser, API clients, links), and each is read here before
anything else sees it: a wrong type, NaN, a fraction where a whole number belongs or a value out of range is
refused with the control's label and what it allows. Nothing is rounded, clamped or coerced.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from pipeline import MODES, SCHEDULERS, UNCONDS, GenerationRequest, RequestError
from pipeline.distribution import TOY_MAX_SEEDS
from pipeline.previews import PREVIEW_DECODERS
from pipeline.guidance import MODE_PARAMS
from pipeline.request import (
    ADHERENCE_RANGE,
    ETA_RANGE,
    FRACTION_RANGE,
    GUIDANCE_SCALE_RANGE,
    MAX_PROMPT_CHARS,
    check_text,
    MAX_SEEDS,
    MAX_WEIGHTED_PROMPTS,
    RESCALE_RANGE,
    SEED_RANGE,
    SIZE_RANGE,
    STEPS_RANGE,
    WEIGHT_RANGE,
)
from pipeline.schedules import SCHEDULES

logger = logging.getLogger(__name__)

TEXT, WHOLE, NUMBER, CHOICE, FLAG = "text", "whole number", "number", "choice", "flag"
NUMBERS = "numbers"  # a fixed number of them (a tuple `Param`, e.g. FDG's scale per level): a text field "10, 5"
PREVIEW_EVERY_RANGE = (1, 50)
PREVIEW_SOURCES = ("pred_x0", "latents")


@dataclass(frozen=True, slots=True)
class Control:
    label: str
    kind: str
    allowed: tuple = ()  # (lo, hi) for numbers, the values for choices
    length: int = 0  # NUMBERS: how many

    def describe(self) -> str:
        """What the control allows, as a sentence's end: "a whole number from 1 to 200"."""
        if self.kind == NUMBERS:
            lo, hi = self.allowed
            return f"{self.length} numbers separated by commas, each from {lo:g} to {hi:g}"
        if self.kind == CHOICE:
            return "one of " + ", ".join(map(str, self.allowed))
        if self.kind in (WHOLE, NUMBER):
            lo, hi = self.allowed
            return f"a {self.kind} from {lo:g} to {hi:g}" if self.kind == NUMBER else f"a whole number from {lo} to {hi}"
        if self.kind == FLAG:
            return "true or false"
        return f"text of at most {MAX_PROMPT_CHARS:,} characters"


CONTROLS: dict[str, Control] = {
    "prompt": Control("Prompt", TEXT),
    "prompt_2": Control("Prompt 2", TEXT),
    "mode": Control("Guidance mode", CHOICE, MODES),
    "negative_prompt": Control("Negative direction prompt", TEXT),
    "negative_prompt_2": Control("Negative direction prompt 2", TEXT),
    "uncond": Control("Unconditional baseline", CHOICE, UNCONDS),
    "guidance_scale": Control("Guidance scale", NUMBER, GUIDANCE_SCALE_RANGE),
    "steps": Control("Steps", WHOLE, STEPS_RANGE),
    "seed": Control("Seed", WHOLE, SEED_RANGE),
    "num_seeds": Control("Number of seeds", WHOLE, (1, MAX_SEEDS)),
    "scheduler": Control("Scheduler", CHOICE, SCHEDULERS),
    "eta": Control("Eta", NUMBER, ETA_RANGE),
    "width": Control("Width", WHOLE, SIZE_RANGE),
    "height": Control("Height", WHOLE, SIZE_RANGE),
    "preview": Control("Preview decoder", CHOICE, PREVIEW_DECODERS),
    "preview_every": Control("Preview every N steps", WHOLE, PREVIEW_EVERY_RANGE),
    "preview_source": Control("Preview shows", CHOICE, PREVIEW_SOURCES),
    "guidance_schedule": Control("Guidance schedule", CHOICE, SCHEDULES),
    "guidance_cutoff": Control("Cutoff", NUMBER, FRACTION_RANGE),
    "interval_start": Control("Interval start", NUMBER, FRACTION_RANGE),
    "interval_stop": Control("Interval stop", NUMBER, FRACTION_RANGE),
    "guidance_rescale": Control("Guidance rescale", NUMBER, RESCALE_RANGE),
    # each mode's own settings, as its entry in the table of modes declares them: perp_neg_scale, apg_eta...
    **{p.name: Control(p.label, NUMBERS if p.length else WHOLE if p.integer else NUMBER, p.range, p.length)
       for p in MODE_PARAMS.values()},
    **{f"weighted_prompt_{k}": Control(f"Weighted prompt {k}", TEXT) for k in range(1, MAX_WEIGHTED_PROMPTS + 1)},
    **{f"weight_{k}": Control(f"Weight {k}", NUMBER, WEIGHT_RANGE) for k in range(1, MAX_WEIGHTED_PROMPTS + 1)},
    "decompose": Control("Decomposition view", FLAG),
    "decompose_seed": Control("Decomposition seed", WHOLE, SEED_RANGE),
    "strength": Control("Strength", NUMBER, FRACTION_RANGE),
    # The toy world's model only (pipeline.models.toy.item_prior); a real model's page has no such control.
    "prompt_adherence": Control("Toy model: how well it learned prompts", NUMBER, ADHERENCE_RANGE),
}
CONTROL_NAMES: tuple[str, ...] = tuple(CONTROLS)
# The request's constructor arguments that `request_from_settings` sets by hand: the required controls and the
# request fields that no single control maps onto (seeds, the interval, weighted prompts, the decomposed seed).
_BUILT = ("prompt", "mode", "guidance_scale", "steps", "width", "height", "scheduler", "decompose_seed")
# Every other control named like a request field passes straight through: derived, not listed, so a new mode's
# parameter (the table of modes adds it to both) can never be dropped on the way (issue 18: perp_neg_scale was).
PASSED_THROUGH: tuple[str, ...] = tuple(
    name for name in CONTROL_NAMES if name in GenerationRequest.__dataclass_fields__ and name not in _BUILT)
# Controls of the other tabs that take numbers, read as strictly.
TAB_CONTROLS: dict[str, Control] = {
    "inversion_steps": Control("Inversion steps", WHOLE, STEPS_RANGE),
    "inversion_guidance_scale": Control("Inversion guidance scale", NUMBER, (0.0, 20.0)),
    # the Distribution tab (ui/distribution_tab.py); its seeds slider narrows the range to the model's own
    "lab_prompt": Control("Lab prompt", TEXT),
    "lab_prompt_2": Control("Lab prompt 2", TEXT),
    "lab_seeds": Control("Lab seeds", WHOLE, (1, TOY_MAX_SEEDS)),
    "lab_mode": Control("Lab guidance mode", CHOICE, MODES),
    "lab_scheduler": Control("Lab scheduler", CHOICE, SCHEDULERS),
    "lab_eta": Control("Lab eta", NUMBER, ETA_RANGE),
    "lab_steps": Control("Lab steps", WHOLE, STEPS_RANGE),
    "lab_size": Control("Lab size", WHOLE, SIZE_RANGE),
    "lab_adherence": Control("Lab prompt adherence", NUMBER, ADHERENCE_RANGE),
    "lab_exact_start": Control("Exact start", FLAG),
    # the Word maps tab (ui/words_tab.py)
    "word_seed": Control("Word seed", WHOLE, SEED_RANGE),
    "word_map_step": Control("Word-map step", WHOLE, (0, STEPS_RANGE[1])),
    "ablation_step": Control("Ablation step", WHOLE, STEPS_RANGE),
}
BY_LABEL: dict[str, str] = {control.label: name for name, control in (CONTROLS | TAB_CONTROLS).items()}

# The library's request fields, by the label of the control that sets them, for its errors.
FIELD_LABELS: dict[str, str] = {
    **{name: control.label for name, control in CONTROLS.items()},
    "seeds": "Seed",
    "guidance_interval": "Interval start",
    "weighted_prompts": "Weighted prompts",
    "init_image": "Start image",
    "init_latents": "Starting noise (from the Invert tab)",
    "forks": "Fork path (from the restored PNG)",
}


def read(name: str, value: Any) -> Any:
    """`value` as control `name` takes it: text, a bool, one of its choices, or a number in its range.

    Whole-number controls take an int or an integral float (sliders send 30.0) and give an int; 2.7 is
    refused, not truncated. Raises `RequestError(name, ...)`; `label_of` turns the name into the label.
    """
    control = CONTROLS.get(name) or TAB_CONTROLS[name]
    if control.kind == TEXT:
        if not isinstance(value, str):
            raise RequestError(name, f"must be text, got {_kind(value)}")
        check_text(name, value)
        return value
    if control.kind == FLAG:
        if not isinstance(value, bool):
            raise RequestError(name, f"must be true or false, got {_shown(value)}")
        return value
    if control.kind == CHOICE:
        if not isinstance(value, str) or value not in control.allowed:
            raise RequestError(name, f"must be {control.describe()}; got {_shown(value)}")
        return value
    if control.kind == NUMBERS:
        return _read_numbers(name, control, value)
    lo, hi = control.allowed
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(name, f"must be {control.describe()}, got {_shown(value)}")
    if not lo <= value <= hi:
        raise RequestError(name, f"must be {control.describe()}, got {_shown(value)}")
    if control.kind == WHOLE:
        if value != int(value):
            raise RequestError(name, f"must be {control.describe()}, got {value!r}: a fraction is not rounded")
        return int(value)
    return float(value)


def _read_numbers(name: str, control: Control, value: Any) -> tuple[float, ...]:
    """A NUMBERS control: the page's text "10, 5", or a list from the API; each entry a number in range."""
    given = value
    if isinstance(value, str):
        try:
            value = [float(part) for part in value.split(",")]
        except ValueError:
            raise RequestError(name, f"must be {control.describe()}, got {_shown(given)}") from None
    if not isinstance(value, (list, tuple)) or len(value) != control.length:
        raise RequestError(name, f"must be {control.describe()}, got {_shown(given)}")
    lo, hi = control.allowed
    for k, entry in enumerate(value, 1):
        if isinstance(entry, bool) or not isinstance(entry, (int, float)) or not math.isfinite(entry) \
                or not lo <= entry <= hi:
            raise RequestError(name, f"must be {control.describe()}; entry {k} is {_shown(entry)}")
    return tuple(float(entry) for entry in value)


def shown_value(name: str, value: Any) -> Any:
    """A value as its control holds it on the page and in links: a NUMBERS control's tuple as "10, 5"."""
    if CONTROLS[name].kind == NUMBERS and isinstance(value, (list, tuple)):
        return ", ".join(f"{entry:g}" for entry in value)
    return value


def label_of(field: str) -> str:
    """The label a person sees for a control or request field (the field itself if it has none)."""
    tab = TAB_CONTROLS.get(field)
    return FIELD_LABELS.get(field) or (tab.label if tab else field)


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _shown(value: Any) -> str:
    """A value in an error message: short, and never a 100 kB echo of hostile input."""
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


# --- controls <-> request, links ----------------------------------------------------------------------------


def request_from_settings(settings: dict[str, Any], init_image=None, init_latents=None) -> GenerationRequest:
    """Controls -> request; seeds are `Number of seeds` consecutive seeds starting at `Seed`.

    Every value is read strictly first (`controls.read`): a wrong type, a fraction for a whole number or an
    out-of-range value raises `RequestError` naming the control, rather than being rounded or clamped. A
    control left out (or None: an API client's null, an emptied number box) takes its request default, except
    the ones a run cannot do without, which are required.
    """
    values = {name: read(name, settings[name]) for name in CONTROL_NAMES if settings.get(name) is not None}
    for name in ("prompt", "mode", "guidance_scale", "steps", "seed", "num_seeds", "scheduler", "width", "height"):
        if name not in values:
            raise RequestError(name, f"is required: {CONTROLS[name].describe()}")
    seed, count = values["seed"], values["num_seeds"]
    if seed + count - 1 > SEED_RANGE[1]:
        raise RequestError("seed", f"plus Number of seeds must stay within {SEED_RANGE[1]}, got {seed} + {count}")
    get, mode = values.get, values["mode"]
    weighted = tuple(  # read only in weighted mode, so other runs' settings (and PNGs) stay free of them
        (get(f"weighted_prompt_{k}", ""), get(f"weight_{k}", 0.0))
        for k in range(1, MAX_WEIGHTED_PROMPTS + 1)
        if mode == "weighted" and get(f"weighted_prompt_{k}", "").strip()
    )
    seeds = tuple(range(seed, seed + count))
    decompose_seed = None
    if get("decompose", False):
        decompose_seed = get("decompose_seed", seed)
        if decompose_seed not in seeds:
            raise RequestError("decompose_seed", f"must be one of this run's seeds, {seed} to {seeds[-1]} (Seed to "
                                                 f"Seed + Number of seeds - 1), got {decompose_seed}")
    defaults = GenerationRequest.__dataclass_fields__
    return GenerationRequest(
        prompt=values["prompt"],
        mode=mode,
        guidance_scale=values["guidance_scale"],
        steps=values["steps"],
        seeds=seeds,
        width=values["width"],
        height=values["height"],
        scheduler=values["scheduler"],
        guidance_interval=(get("interval_start", 0.0), get("interval_stop", 1.0)),
        weighted_prompts=weighted,
        decompose_seed=decompose_seed,
        init_image=init_image,
        init_latents=init_latents,
        **{field: get(field, defaults[field].default) for field in PASSED_THROUGH},
    )


def settings_from_request(request: GenerationRequest) -> dict[str, Any]:
    """Request -> the controls it decides (previews settings are left as they are)."""
    data = request.to_dict()
    seeds = data.pop("seeds")
    data["seed"], data["num_seeds"] = seeds[0], len(seeds)
    data["interval_start"], data["interval_stop"] = data.pop("guidance_interval")
    pairs = data.pop("weighted_prompts")
    for k in range(1, MAX_WEIGHTED_PROMPTS + 1):
        text, weight = pairs[k - 1] if k <= len(pairs) else ("", 0.0)
        data[f"weighted_prompt_{k}"], data[f"weight_{k}"] = text, weight
    seed_to_decompose = data.pop("decompose_seed")
    data["decompose"] = seed_to_decompose is not None
    data["decompose_seed"] = seed_to_decompose if seed_to_decompose is not None else seeds[0]
    data.update({name: shown_value(name, data[name]) for name in data if name in CONTROLS})
    if list(seeds) != list(range(seeds[0], seeds[0] + len(seeds))):
        logger.info("seeds %s are not consecutive; the page shows %d seeds from %d", seeds, len(seeds), seeds[0])
    return data


MAX_LINK_CHARS = 8_000  # browsers and proxies refuse longer URLs (over ~65 kB, Gradio's server answered HTTP 500)
MAX_QUERY_VALUE_CHARS = 2_000


def settings_from_query(params: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """URL query -> control values; returns the values and a list of problems, each naming the control.

    A value that its control would refuse is left out (the control keeps its value) and reported, so a
    mistyped or tampered link says what it could not use. Unknown keys are ignored.
    """
    settings, problems = {}, []
    for name in CONTROL_NAMES:
        if name not in params:
            continue
        raw, control = params[name], CONTROLS[name]
        if len(raw) > MAX_QUERY_VALUE_CHARS:
            problems.append(f"{control.label}: {len(raw):,} characters long in the link; links carry at most "
                            f"{MAX_QUERY_VALUE_CHARS:,}")
            continue
        try:
            if control.kind == FLAG:
                if raw.lower() not in ("true", "false"):
                    raise RequestError(name, f"must be true or false, got {raw[:40]!r}")
                value: Any = raw.lower() == "true"
            elif control.kind in (WHOLE, NUMBER):
                try:
                    value = float(raw) if control.kind == NUMBER or not raw.lstrip("-").isdigit() else int(raw)
                except ValueError:
                    raise RequestError(name, f"must be {control.describe()}, got {raw[:40]!r}") from None
            else:
                value = raw
            settings[name] = read(name, value)
        except RequestError as exc:
            problems.append(f"{label_of(exc.field)}: {exc.detail}")
    return settings, problems


def query_from_settings(settings: dict[str, Any]) -> str:
    return urlencode({name: str(settings[name]).lower() if CONTROLS[name].kind == FLAG
                      else shown_value(name, settings[name]) for name in CONTROL_NAMES if name in settings})
