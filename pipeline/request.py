"""GenerationRequest: one validated description of a run.

Validation happens here, before any model is touched, so that a notebook user and an API client get the
same message naming the field and its allowed range (diffusers' rule: raise, never silently correct).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

MODES: tuple[str, ...] = ("cfg", "reversed", "negative_direction", "cond_only", "uncond_only")
SCHEDULERS: tuple[str, ...] = ("euler", "euler_a", "ddim", "dpmpp_2m")
UNCONDS: tuple[str, ...] = ("zeros", "empty")

STEPS_RANGE = (1, 200)
GUIDANCE_SCALE_RANGE = (0.0, 50.0)
ETA_RANGE = (0.0, 1.0)
SIZE_RANGE = (64, 2048)
SIZE_MULTIPLE = 8
MAX_SEEDS = 16
SEED_RANGE = (0, 2**32 - 1)

# Modes whose prediction depends on the prompt: for these an empty prompt is a mistake, not an experiment.
MODES_NEEDING_PROMPT = frozenset({"cfg", "reversed", "negative_direction", "cond_only"})


class RequestError(ValueError):
    """A request field is out of its allowed range. `field` names it, so a UI can point at the control."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int_range(field: str, value: Any, lo: int, hi: int) -> None:
    if not _is_int(value) or not lo <= value <= hi:
        raise RequestError(field, f"must be an integer from {lo} to {hi}, got {value!r}")


def _check_float_range(field: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(field, f"must be a finite number from {lo} to {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(field, f"must be from {lo} to {hi}, got {value!r}")


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RequestError(field, f"must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """Everything that decides the images of one run. Same request, same device: same images."""

    prompt: str
    prompt_2: str = ""  # text encoder 2 (OpenCLIP bigG); empty means "same as prompt", as in diffusers
    negative_prompt: str = ""  # only read by mode="negative_direction"
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

    def __post_init__(self) -> None:
        # Lists arrive from JSON and UIs; a tuple keeps the request hashable and immutable.
        if isinstance(self.seeds, list):
            object.__setattr__(self, "seeds", tuple(self.seeds))
        for name in ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2"):
            if not isinstance(getattr(self, name), str):
                raise RequestError(name, f"must be text, got {type(getattr(self, name)).__name__}")
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
        if self.mode in MODES_NEEDING_PROMPT and not self.prompt.strip():
            raise RequestError("prompt", f"must not be empty in mode {self.mode!r}")
        if self.mode == "negative_direction" and not self.negative_prompt.strip():
            raise RequestError("negative_prompt", "must not be empty in mode 'negative_direction'")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seeds"] = list(self.seeds)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        """Build from plain data (JSON, presets); an unknown key is an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RequestError(unknown[0], f"unknown field; known fields are {', '.join(sorted(known))}")
        return cls(**data)
