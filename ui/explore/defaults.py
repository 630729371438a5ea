"""The Explore tab's starting values and its collapsed groups: data the other rooms read."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from pipeline import GenerationRequest
from pipeline.request import MAX_WEIGHTED_PROMPTS

from ..controls import CONTROLS, shown_value

# The Explore tab's collapsed groups, and the controls inside each: a preset, PNG or the Invert tab that changes
# one of these opens its group, so the change is seen.
GROUP_TITLES = {
    "text": "Prompt 2 and the unconditional baseline",
    "schedule": "Guidance schedule and interval",
    "size": "Size and start image (img2img)",
    "previews": "Previews and decomposition",
    "links": "Links and saved settings",
}
CONTROL_GROUPS = {
    "prompt_2": "text", "uncond": "text",
    "guidance_schedule": "schedule", "guidance_cutoff": "schedule", "interval_start": "schedule",
    "interval_stop": "schedule", "guidance_rescale": "schedule",
    "width": "size", "height": "size", "strength": "size",
    "preview": "previews", "preview_every": "previews", "preview_source": "previews", "decompose": "previews",
    "decompose_seed": "previews",
}

# Defaults: the request's own, where it has one (one source for the page, the API and notebooks)...
REQUEST_DEFAULTS: dict[str, Any] = {
    **{f.name: shown_value(f.name, f.default) for f in fields(GenerationRequest)
       if f.default is not MISSING and f.name in CONTROLS},
    "interval_start": GenerationRequest.__dataclass_fields__["guidance_interval"].default[0],
    "interval_stop": GenerationRequest.__dataclass_fields__["guidance_interval"].default[1],
    **{f"weighted_prompt_{k}": "" for k in range(1, MAX_WEIGHTED_PROMPTS + 1)},
}
# ... and the page's own starting point where the request has none (or a different one for a first look).
PAGE_DEFAULTS: dict[str, Any] = {
    "prompt": "a watercolor painting of an otter",
    "negative_prompt": "solar system with 9 planets",
    "seed": 1,
    "num_seeds": 2,
    "preview": "tiny",
}
# The toy world's starting point, in its own words: text it cannot read would be ignored there (an otter as
# Weighted prompt 1 samples anything at all), and would ride along, unseen, in links and "Changed:" notes.
TOY_PAGE_DEFAULTS: dict[str, Any] = {
    "prompt": "red circle",
    "negative_prompt": "big",  # as a negative direction: towards red circles, away from big shapes
    "weighted_prompt_1": "red circle",
}


def page_defaults(toy: bool) -> dict[str, Any]:
    """The page's starting values that the request does not give: the toy world's own words on the toy."""
    return {**PAGE_DEFAULTS, "weighted_prompt_1": PAGE_DEFAULTS["prompt"], **(TOY_PAGE_DEFAULTS if toy else {})}


PNG_LABEL = "Drop a CFG Explorer PNG to restore its settings"
