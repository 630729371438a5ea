"""The distribution lab: what guidance does to the distribution of many seeds, measured.

One lab run takes one request (prompt, mode, sampler, steps, size...), a list of guidance scales and N seeds,
and yields one `ScaleResult` per scale (per value of an optional second axis) as it finishes. The same seeds
run at every scale, so the differences between scales are not seed noise.

In the toy world the data distribution is known, so every result is exact against it (`ExactStats`): where
each seed landed among the 96 items, and three targets: the data's p(x | c), the toy model's own
p_a(x | c) (`pipeline.models.toy.item_prior`) and the tilted p_a(x | c)^s p(x)^(1 - s) that "sampling the
sharpened model" would give, which CFG does not sample (Bradley & Nakkiran 2024, arXiv 2408.09000;
Chidambaram et al. 2024, arXiv 2409.13074). On a real model no target exists; it gets diversity proxies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from .models import toy
from .request import GUIDANCE_SCALE_RANGE, SEED_RANGE, GenerationRequest, RequestError

ATTRIBUTES: tuple[str, ...] = tuple(toy.VOCABULARY)  # size, colour, shape, vertical, horizontal
AXES: tuple[str, ...] = ("guidance_interval", "guidance_rescale", "prompt_adherence", "mode", "scheduler")
MAX_SCALES = 12
MAX_AXIS_VALUES = 6
TOY_MAX_SEEDS = 1024  # the toy's exact denoiser costs microseconds per seed and step
# A real UNet costs ~0.1 s per image-step on a GPU at 1024 px: 64 seeds x 12 scales x 30 steps x 2 passes is
# already ~1.5 h there; more would be a job, not a lab experiment.
MODEL_MAX_SEEDS = 64
MAX_THUMBNAILS = 64
THUMBNAIL_SIZE = 96  # px, the longer side


@dataclass(frozen=True)
class LabSettings:
    """What one lab run measures, validated on construction (`RequestError` naming the field and its range).

    `request` gives the prompt, prompt_2, mode, scheduler, eta, steps, size, mode parameters and
    prompt_adherence; its seeds and guidance_scale are ignored (the lab sets them). The seeds are
    first_seed .. first_seed + n_seeds - 1, the same for every scale.
    """

    request: GenerationRequest
    scales: tuple[float, ...]
    n_seeds: int
    first_seed: int = 0
    axis: str | None = None  # one of AXES; one curve per value
    axis_values: tuple = ()
    exact_start: bool = False  # toy only: start from the exact noisy data distribution, not N(0, sigma_max^2)

    def __post_init__(self) -> None:
        if not isinstance(self.request, GenerationRequest):
            raise RequestError("request", f"must be a GenerationRequest, got {type(self.request).__name__}")
        if isinstance(self.scales, list):
            object.__setattr__(self, "scales", tuple(self.scales))
        if isinstance(self.axis_values, list):
            object.__setattr__(self, "axis_values", tuple(_tuple(v) for v in self.axis_values))
        _check_scales(self.scales)
        _check_int("n_seeds", self.n_seeds, 1, TOY_MAX_SEEDS)
        _check_int("first_seed", self.first_seed, SEED_RANGE[0], SEED_RANGE[1] - self.n_seeds + 1)
        if not isinstance(self.exact_start, bool):
            raise RequestError("exact_start", f"must be true or false, got {self.exact_start!r}")
        if self.exact_start and self.request.init_latents is not None:
            raise RequestError("exact_start", "the exact start sets the starting latents; the request gives its own")
        self._check_axis()

    def _check_axis(self) -> None:
        if self.axis is None:
            if self.axis_values:
                raise RequestError("axis_values", "give an axis to vary, or no values")
            return
        if self.axis not in AXES:
            raise RequestError("axis", f"must be one of {', '.join(AXES)} (or none), got {self.axis!r}")
        if not isinstance(self.axis_values, tuple) or not 1 <= len(self.axis_values) <= MAX_AXIS_VALUES:
            raise RequestError("axis_values", f"must list from 1 to {MAX_AXIS_VALUES} values of {self.axis}, "
                                              f"got {self.axis_values!r}"[:200])
        if len(set(self.axis_values)) != len(self.axis_values):
            raise RequestError("axis_values", f"each value must appear once, got {self.axis_values!r}"[:200])
        self.requests()  # each value's request validates it

    def requests(self) -> list[tuple[Any, GenerationRequest]]:
        """(axis value, the request for that value), one per axis value; (None, request) without an axis.

        Each request has the first seed and the first scale; the lab sets both per batch."""
        base = dataclasses.replace(self.request, seeds=(self.first_seed,), guidance_scale=self.scales[0],
                                   decompose_seed=None)
        if self.axis is None:
            return [(None, base)]
        out = []
        for value in self.axis_values:
            try:
                out.append((value, dataclasses.replace(base, **_axis_fields(self.axis, value, base))))
            except RequestError as error:
                raise RequestError("axis_values", f"{self.axis} value {value!r}: {error.field}: {error.detail}"
                                   [:300]) from None
        return out


def _tuple(value: Any) -> Any:
    """TOML and JSON give lists; a tuple keeps the settings hashable."""
    return tuple(value) if isinstance(value, list) else value


def _check_int(field: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise RequestError(field, f"must be an integer from {lo} to {hi}, got {value!r}"[:200])


def _check_scales(scales: Any) -> None:
    lo, hi = GUIDANCE_SCALE_RANGE
    if not isinstance(scales, tuple) or not 1 <= len(scales) <= MAX_SCALES:
        raise RequestError("scales", f"must list from 1 to {MAX_SCALES} guidance scales, got {scales!r}"[:200])
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not lo <= scale <= hi:
            raise RequestError("scales", f"each must be a number from {lo} to {hi}, got {scale!r}"[:200])
    if len(set(scales)) != len(scales):
        raise RequestError("scales", f"each scale must appear once, got {scales!r}")


def _axis_fields(axis: str, value: Any, base: GenerationRequest) -> dict[str, Any]:
    """The request fields one axis value sets. A scheduler value is a name, or a (name, eta) pair."""
    if axis == "scheduler":
        if isinstance(value, tuple):
            if len(value) != 2:
                raise RequestError("scheduler", f"must be a name or a (name, eta) pair, got {value!r}")
            return {"scheduler": value[0], "eta": value[1]}
        return {"scheduler": value}
    return {axis: value}


@dataclass(frozen=True)
class ExactStats:
    """Toy world only: everything is exact against the known data."""

    counts: np.ndarray  # (96,) int: how many seeds landed nearest each item (toy.ITEMS order)
    distances: np.ndarray  # (n_seeds,) latent distance of each sample to its nearest item
    on_data: np.ndarray  # (n_seeds,) bool: the sample IS a data item (distance below `on_data_bound`)
    targets: dict[str, np.ndarray]  # "data", "model", "tilted": each (96,), sums to 1
    metrics: dict[str, float]  # precision, tv_data, tv_model, tv_tilted, entropy, effective_items,
    # median_distance, off_data, noise_band (and noise_band_data, noise_band_tilted)


@dataclass(frozen=True)
class ScaleResult:
    scale: float
    axis_value: Any | None  # None when LabSettings.axis is None
    done: int  # results finished so far, including this one (for a progress bar)
    total: int  # len(scales) * max(1, len(axis_values))
    n_seeds: int
    thumbnails: tuple[Image.Image, ...]  # up to MAX_THUMBNAILS small final images, seed order, for a mosaic
    exact: ExactStats | None  # toy world; None on real models
    proxies: dict[str, float] | None  # real/tiny models only: pairwise_latent_distance, vendi
    seconds: float  # wall time this result took


def marginal(p: np.ndarray, attribute: str) -> dict[str, float]:
    """A (96,) distribution over toy.ITEMS -> the share of each value of `attribute`, in VOCABULARY order."""
    raise NotImplementedError


def measure(pipe, request: GenerationRequest, scales: Sequence[float], n_seeds: int,
            **options: Any) -> Iterator[ScaleResult]:
    """Yield one result per (axis value, scale) as it finishes; `options` are LabSettings' other fields."""
    return run_lab(pipe, LabSettings(request, tuple(scales), n_seeds, **options))


def run_lab(pipe, settings: LabSettings) -> Iterator[ScaleResult]:
    """`measure`, from a LabSettings."""
    raise NotImplementedError


def curves(results: Sequence[ScaleResult]) -> dict[str, dict[Any, list[tuple[float, float]]]]:
    """metric -> axis value -> [(scale, value), ...] sorted by scale: the exact metrics (toy) or the proxies."""
    raise NotImplementedError


@dataclass(frozen=True)
class LabPreset:
    """presets/lab/*.toml, loaded and validated like presets/*.toml (an unknown key is an error)."""

    name: str
    description: str  # what the learner will see, MEASURED on its own seeds (tests/unit/test_distribution.py)
    settings: LabSettings


def load_lab_presets(folder=None) -> list[LabPreset]:
    raise NotImplementedError
