"""GenerationRequest: one validated description of a run.

Validation happens here, before any model is touched, so that a notebook user and an API client get the
same message naming the field and its allowed range (diffusers' rule: raise, never silently correct).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from dataclasses import replace as _replace
from typing import Any

from PIL import Image
from torch import Tensor

from .guidance import GUIDANCE_MODES, MODE_PARAMS
from .schedulers import SCHEDULERS
from .schedules import SCHEDULES

MODES: tuple[str, ...] = tuple(GUIDANCE_MODES)  # the table of modes (pipeline/guidance/modes/), in its order
UNCONDS: tuple[str, ...] = ("zeros", "empty")

STEPS_RANGE = (1, 200)
GUIDANCE_SCALE_RANGE = (0.0, 50.0)
ETA_RANGE = (0.0, 1.0)
SIZE_RANGE = (64, 2048)
SIZE_MULTIPLE = 8
MAX_SEEDS = 16
SEED_RANGE = (0, 2**32 - 1)
RESCALE_RANGE = (0.0, 1.0)
FRACTION_RANGE = (0.0, 1.0)
ADHERENCE_RANGE = (0.0, 1.0)  # the toy model's prompt_adherence
MAX_WEIGHTED_PROMPTS = 4
WEIGHT_RANGE = (-20.0, 20.0)
# CLIP reads 77 tokens (a few hundred characters); longer text is cut off (the page says where). This bound
# only keeps hostile input (a 100 kB prompt in every field) from costing tokenizer time and memory.
MAX_PROMPT_CHARS = 10_000
MAX_INIT_IMAGE_SIDE = 4096  # uploads are resized to width x height; anything larger is refused, not decoded
# What a fork may change from step k on (pipeline/whatif.py): the guidance, never the prompts, seeds, size or
# sampler, so that the steps before k stay valid.
FORKABLE: tuple[str, ...] = ("mode", "guidance_scale", "guidance_schedule", "guidance_interval", "guidance_cutoff",
                             "guidance_rescale", *MODE_PARAMS)
# Inputs that are data, not settings: they stay out of to_dict (PNG metadata, links, presets).
NON_SETTINGS = ("init_image", "init_latents")


class RequestError(ValueError):
    """A request field is out of its allowed range.

    `field` names it, so a UI can point at the control by its label; `detail` says what is allowed and what
    came, without the field's name, so a UI never has to split the message text to get it back.
    """

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


def _short(value: Any) -> str:
    """A value for an error message: its repr, cut short, so hostile input is never echoed whole."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int_range(field: str, value: Any, lo: int, hi: int) -> None:
    if not _is_int(value) or not lo <= value <= hi:
        raise RequestError(field, f"must be an integer from {lo} to {hi}, got {_short(value)}")


def _check_float_range(field: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(field, f"must be a finite number from {lo} to {hi}, got {_short(value)}")
    if not lo <= value <= hi:
        raise RequestError(field, f"must be from {lo} to {hi}, got {_short(value)}")


def _check_floats(field: str, value: Any, length: int, lo: float, hi: float) -> None:
    """A tuple Param (`Param.length`): exactly `length` finite numbers, each from lo to hi."""
    if not isinstance(value, tuple) or len(value) != length:
        raise RequestError(field, f"must be {length} numbers, each from {lo} to {hi}, got {_short(value)}")
    for k, entry in enumerate(value, 1):
        if isinstance(entry, bool) or not isinstance(entry, (int, float)) or not math.isfinite(entry):
            raise RequestError(field, f"entry {k} must be a finite number from {lo} to {hi}, got {_short(entry)}")
        if not lo <= entry <= hi:
            raise RequestError(field, f"entry {k} must be from {lo} to {hi}, got {_short(entry)}")


def check_text(field: str, value: Any) -> None:
    """Text a tokenizer can take: a str of at most MAX_PROMPT_CHARS, and valid Unicode (JSON can carry a lone
    surrogate such as "\\ud800", which no UTF-8 tokenizer can encode)."""
    if not isinstance(value, str):
        raise RequestError(field, f"must be text, got {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise RequestError(field, f"must be at most {MAX_PROMPT_CHARS:,} characters, got {len(value):,}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise RequestError(field, f"must be valid Unicode text; character {error.start + 1} is a lone surrogate "
                                  f"({value[error.start]!r})") from None


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RequestError(field, f"must be one of {', '.join(choices)}; got {_short(value)}")


@dataclass(frozen=True, slots=True)
class ForkPoint:
    """From step index `step` (0-based: the fork continues after 1-based step `step`) on, the run's guidance
    settings are the root request's with `changes` applied: one piece of a piecewise guidance schedule."""

    step: int
    changes: tuple[tuple[str, Any], ...]  # (FORKABLE field, value), sorted by field

    @classmethod
    def of(cls, value: Any) -> ForkPoint:
        """From a ForkPoint, or from plain data {"step": k, "changes": {...}} (JSON, PNG metadata)."""
        if isinstance(value, ForkPoint):
            return value
        if not isinstance(value, dict) or set(value) != {"step", "changes"} or not isinstance(value["changes"], dict):
            raise RequestError("forks", f'each entry must be {{"step": k, "changes": {{...}}}}, got {_short(value)}')
        changes = tuple(sorted((name, tuple(v) if isinstance(v, list) else v) for name, v in value["changes"].items()))
        return cls(value["step"], changes)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "changes": {name: list(v) if isinstance(v, tuple) else v for name, v in self.changes}}


def _with_mode_params(cls: type) -> type:
    """Add every mode's own parameters (`MODE_PARAMS`: apg_eta, zero_init_steps, perp_neg_scale...) as fields
    with their defaults, so that a mode declares a parameter once, in its table entry."""
    for param in MODE_PARAMS.values():
        cls.__annotations__[param.name] = "tuple[float, ...]" if param.length else "int" if param.integer else "float"
        setattr(cls, param.name, param.default)
    return cls


@dataclass(frozen=True, slots=True)
@_with_mode_params
class GenerationRequest:
    """Everything that decides the images of one run. Same request, same device: same images."""

    prompt: str
    prompt_2: str = ""  # text encoder 2 (OpenCLIP bigG); empty means "same as prompt", as in diffusers
    negative_prompt: str = ""  # read by the modes that name it in `reads` (negative_direction, perp_neg)
    negative_prompt_2: str = ""  # empty means "same as negative_prompt"
    mode: str = "cfg"
    guidance_scale: float = 7.5  # diffusers'/Imagen's convention: 1 means no guidance
    steps: int = 30
    seeds: tuple[int, ...] = (0,)
    width: int = 1024
    height: int = 1024
    scheduler: str = "euler"
    eta: float = 0.0  # DDIM's eta (Song et al. 2020, eq. 16); other schedulers ignore it
    uncond: str = "zeros"  # the baseline: SDXL's all-zero embeddings, or the encoded empty prompt
    # Guidance lab. Schedules change the scale over the run; outside the interval no guidance is applied
    # (the conditional prediction alone, one UNet pass).
    guidance_schedule: str = "constant"
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # fractions of the run, as diffusers.guiders counts
    guidance_cutoff: float = 0.4  # the `cutoff` schedule's switch-off point
    guidance_rescale: float = 0.0  # phi of Lin et al. 2023 (arXiv 2305.08891), as diffusers' argument
    # mode="weighted" (Crowson's cfg_sample): (prompt, weight) pairs; the baseline gets 1 - sum(weights)
    weighted_prompts: tuple[tuple[str, float], ...] = ()
    # the seed whose unconditional, conditional and guided predictions are decomposed at every step
    decompose_seed: int | None = None
    # img2img: the image is resized to width x height, encoded, noised to the step strength x steps from the
    # end, and denoised from there (diffusers' StableDiffusionXLImg2ImgPipeline). Strength 0 is a VAE round trip.
    init_image: Image.Image | None = field(default=None, compare=False, repr=False)
    strength: float = 0.75
    # starting latents instead of seeded noise, e.g. from DDIM inversion: (1 or len(seeds), 4, H/f, W/f),
    # scaled by the scheduler's init_noise_sigma as diffusers' `latents=` argument is
    init_latents: Tensor | None = field(default=None, compare=False, repr=False)
    # The fork path (pipeline/whatif.py): from each point's step on, its guidance changes apply. A forked run's
    # PNG carries it, and running the request replays the whole path in one run.
    forks: tuple[ForkPoint, ...] = ()
    # The toy world only: how well its model learned prompts, from 0 to 1 (pipeline.models.toy.item_prior).
    # None: the model's own default. A real model refuses any other value (pipeline.loop).
    prompt_adherence: float | None = None
    # Then each mode's own parameters, added by `_with_mode_params` from the table of modes: apg_eta,
    # apg_momentum, apg_norm_threshold (APG), zero_init_steps (CFG-Zero*), perp_neg_scale (Perp-Neg).

    def __post_init__(self) -> None:
        # Lists arrive from JSON and UIs; a tuple keeps the request hashable and immutable.
        if isinstance(self.seeds, list):
            object.__setattr__(self, "seeds", tuple(self.seeds))
        if isinstance(self.guidance_interval, list):
            object.__setattr__(self, "guidance_interval", tuple(self.guidance_interval))
        if isinstance(self.weighted_prompts, list):
            object.__setattr__(self, "weighted_prompts", tuple(tuple(p) for p in self.weighted_prompts))
        if isinstance(self.forks, (list, tuple)):
            object.__setattr__(self, "forks", tuple(ForkPoint.of(p) for p in self.forks))
        for param in MODE_PARAMS.values():
            if param.length and isinstance(getattr(self, param.name), list):
                object.__setattr__(self, param.name, tuple(getattr(self, param.name)))
        for name in ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2"):
            check_text(name, getattr(self, name))
        _check_choice("mode", self.mode, MODES)
        _check_choice("scheduler", self.scheduler, SCHEDULERS)
        _check_choice("uncond", self.uncond, UNCONDS)
        _check_float_range("guidance_scale", self.guidance_scale, *GUIDANCE_SCALE_RANGE)
        _check_int_range("steps", self.steps, *STEPS_RANGE)
        _check_float_range("eta", self.eta, *ETA_RANGE)
        for name in ("width", "height"):
            value = getattr(self, name)
            lo, hi = SIZE_RANGE
            if not _is_int(value) or not lo <= value <= hi or value % SIZE_MULTIPLE:
                raise RequestError(name, f"must be a multiple of {SIZE_MULTIPLE} from {lo} to {hi}, got {value!r}")
        if not isinstance(self.seeds, tuple) or not 1 <= len(self.seeds) <= MAX_SEEDS:
            raise RequestError("seeds", f"must list from 1 to {MAX_SEEDS} seeds, got {self.seeds!r}")
        for seed in self.seeds:
            _check_int_range("seeds", seed, *SEED_RANGE)
        self._check_lab()
        mode = GUIDANCE_MODES[self.mode]
        for name in mode.reads:  # for these modes an empty prompt is a mistake, not an experiment
            if not getattr(self, name).strip():
                raise RequestError(name, f"must not be empty in mode {self.mode!r}")
        problem = mode.check_of(self)
        if problem is not None:
            raise RequestError(*problem)
        self._check_forks()

    def _check_forks(self) -> None:
        if not isinstance(self.forks, tuple):
            raise RequestError("forks", f"must be a list of fork points, got {_short(self.forks)}")
        previous = 0
        for point in self.forks:
            if not _is_int(point.step) or not previous < point.step < self.steps:
                raise RequestError("forks", f"fork steps must increase, each from {previous + 1} to {self.steps - 1}, "
                                            f"got {_short(point.step)}")
            previous = point.step
            for name, _ in point.changes:
                if name not in FORKABLE:
                    raise RequestError("forks", f"a fork may change only {', '.join(FORKABLE)}; got {name!r}")
        for segment in [self, *(self.settings_at(p.step) for p in self.forks)]:
            # Such a mode keeps state from step to step (APG's momentum), which a fork from a cache cannot restore.
            mode = GUIDANCE_MODES[segment.mode]
            if self.forks and mode.new_state(mode.params_of(segment)) is not None:
                raise RequestError("forks", f"mode {segment.mode!r} keeps state across steps (apg_momentum "
                                            f"{segment.apg_momentum}); set apg_momentum to 0 to fork it")

    def settings_at(self, step_index: int) -> GenerationRequest:
        """The settings that step `step_index` (0-based) runs with: the last fork point at or before it applies.

        Validated like any request, so a fork to a mode that needs a negative prompt says so."""
        point = None
        for candidate in self.forks:
            if candidate.step <= step_index:
                point = candidate
        if point is None:
            return self if not self.forks else _replace(self, forks=())
        return _replace(self, forks=(), **dict(point.changes))

    def _check_lab(self) -> None:
        _check_choice("guidance_schedule", self.guidance_schedule, SCHEDULES)
        interval = self.guidance_interval
        if (
            not isinstance(interval, tuple)
            or len(interval) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval)
            or not 0.0 <= interval[0] < interval[1] <= 1.0
        ):
            raise RequestError("guidance_interval", f"must be (start, stop) with 0 <= start < stop <= 1, got {interval!r}")
        _check_float_range("guidance_cutoff", self.guidance_cutoff, *FRACTION_RANGE)
        _check_float_range("guidance_rescale", self.guidance_rescale, *RESCALE_RANGE)
        for param in MODE_PARAMS.values():
            if param.length:
                _check_floats(param.name, getattr(self, param.name), param.length, *param.range)
                continue
            check = _check_int_range if param.integer else _check_float_range
            check(param.name, getattr(self, param.name), *param.range)
        prompts = self.weighted_prompts
        if not isinstance(prompts, tuple) or len(prompts) > MAX_WEIGHTED_PROMPTS:
            raise RequestError("weighted_prompts", f"must list at most {MAX_WEIGHTED_PROMPTS} (prompt, weight) pairs")
        for pair in prompts:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) and pair[0].strip()):
                raise RequestError("weighted_prompts", f"each entry must be (non-empty prompt, weight), got {pair!r}"[:200])
            check_text("weighted_prompts", pair[0])
            _check_float_range("weighted_prompts", pair[1], *WEIGHT_RANGE)
        _check_float_range("strength", self.strength, 0.0, 1.0)
        if self.prompt_adherence is not None:
            _check_float_range("prompt_adherence", self.prompt_adherence, *ADHERENCE_RANGE)
        if self.init_image is not None:
            if not isinstance(self.init_image, Image.Image):
                raise RequestError("init_image", f"must be a PIL image, got {type(self.init_image).__name__}")
            w, h = self.init_image.size
            if max(w, h) > MAX_INIT_IMAGE_SIDE or min(w, h) < 1:
                raise RequestError("init_image", f"must be at most {MAX_INIT_IMAGE_SIDE} px on each side, got {w}x{h}")
        if self.init_latents is not None:
            if self.init_image is not None:
                raise RequestError("init_latents", "give either init_latents or init_image, not both")
            if not isinstance(self.init_latents, Tensor) or self.init_latents.ndim != 4:
                raise RequestError("init_latents", "must be a tensor of shape (1 or len(seeds), 4, H/f, W/f)")
            if self.init_latents.shape[0] not in (1, len(self.seeds)):
                raise RequestError("init_latents", f"batch must be 1 or {len(self.seeds)}, got {self.init_latents.shape[0]}")
        if self.decompose_seed is not None and not _is_int(self.decompose_seed):
            raise RequestError("decompose_seed", f"must be one of the seeds {list(self.seeds)}, got {self.decompose_seed!r}")
        if self.decompose_seed is not None and self.decompose_seed not in self.seeds:
            raise RequestError("decompose_seed", f"must be one of the seeds {list(self.seeds)}, got {self.decompose_seed!r}")

    @property
    def baseline_weight(self) -> float:
        """Weighted mode: the baseline's weight, 1 - sum(weights), so that the weights sum to 1."""
        return 1.0 - sum(weight for _, weight in self.weighted_prompts)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (JSON-ready). Image and latent inputs are left out."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in NON_SETTINGS}
        data["seeds"] = list(self.seeds)
        data["guidance_interval"] = list(self.guidance_interval)
        data["weighted_prompts"] = [list(p) for p in self.weighted_prompts]
        data["forks"] = [p.to_dict() for p in self.forks]
        data.update({param.name: list(data[param.name]) for param in MODE_PARAMS.values() if param.length})
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        """Build from plain data (JSON, presets); an unknown key is an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RequestError(unknown[0], f"unknown field; known fields are {', '.join(sorted(known))}")
        return cls(**data)
