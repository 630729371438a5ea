"""Weighted prompts: Crowson's `cfg_sample` (k-diffusion's CFG over several prompts, each with its weight)."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ..base import UNCOND, Mode, Params, Part, Predictions, weighted_part

ORDER = 90


def weighted(noise_preds: list[Tensor], weights: list[float], noise_pred_uncond: Tensor | None) -> Tensor:
    """Weighted prompts (Crowson's `cfg_sample`): sum_i w_i eps_i + (1 - sum_i w_i) eps_u.

    One prompt at weight w is exactly CFG at scale w. The baseline may be None when its weight is 0.
    """
    baseline_weight = 1.0 - sum(weights)
    result = noise_pred_uncond * baseline_weight if noise_pred_uncond is not None else 0.0  # None: weight ~0
    for noise_pred, weight in zip(noise_preds, weights):
        result = result + weight * noise_pred
    return result


def needs(scale: float, params: Params) -> tuple[Part, ...]:
    parts = tuple(weighted_part(k) for k, (_, w) in enumerate(params.weighted_prompts) if w != 0.0)
    # Weights like (0.7, 0.2, 0.1) leave a baseline weight of 1e-16, not 0: no pass is worth that.
    baseline_weight = 1.0 - sum(weight for _, weight in params.weighted_prompts)
    baseline = not math.isclose(baseline_weight, 0.0, abs_tol=1e-9)
    return ((UNCOND,) if baseline else ()) + parts


def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
    used = [(preds[weighted_part(k)], w) for k, (_, w) in enumerate(params.weighted_prompts) if w != 0.0]
    return weighted([p for p, _ in used], [w for _, w in used], preds.get(UNCOND))


def check(params: Params) -> tuple[str, str] | None:
    if not params.weighted_prompts:
        return "weighted_prompts", "mode 'weighted' needs at least one (prompt, weight) pair"
    for name, unused in (("guidance_rescale", params.guidance_rescale != 0.0),
                         ("guidance_schedule", params.guidance_schedule != "constant"),
                         ("guidance_interval", tuple(params.guidance_interval) != (0.0, 1.0))):
        if unused:  # the weights are the whole rule: say so rather than ignore these
            return name, "is not used by mode 'weighted' (its weights set the guidance); reset it"
    return None


MODE = Mode(
    "weighted", "Weighted prompts",
    r"$$\hat\epsilon = \textstyle\sum_i w_i\,\epsilon_i + (1 - \sum_i w_i)\,\epsilon_u$$ "
    r"Crowson's cfg_sample: each prompt pulls with its weight; one prompt at weight $w$ is CFG at scale $w$.",
    needs, combine, reads=(), uses=("weighted_prompts",), guided=False, check=check,
    unused=(("prompt", "the weighted prompts below are the text"),
            ("prompt_2", "the weighted prompts below are the text"), ("guidance_scale", "the weights are the scales")),
)
