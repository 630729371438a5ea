"""What a guidance mode is made of: the predictions it can ask for, its parameters, and its table entry.

This module knows nothing of `GenerationRequest` (pipeline/request.py imports the table to add each mode's
parameters as fields, so the table must not import the request). A mode sees only `Params`: its own
parameters, read from whatever settings object the caller holds, as a diffusers guider's `forward` sees only
its own attributes and the predictions it asked for.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol

import torch
from torch import Tensor


class Source(enum.Enum):
    """What a UNet prediction is conditioned on."""

    BASELINE = "baseline"  # SDXL's all-zero embeddings, or the encoded empty prompt (the request's `uncond`)
    PROMPT = "prompt"  # prompt and prompt_2
    NEGATIVE = "negative"  # negative_prompt and negative_prompt_2
    WEIGHTED = "weighted"  # one of weighted_prompts


@dataclass(frozen=True, slots=True)
class Part:
    """One prediction a step can ask the model for.

    `variant` names a model variant for this pass ("" is the plain UNet). It is the declared hook point for
    perturbed-attention guidance (PAG, Ahn et al. 2024, arXiv 2403.17377): a mode asks for
    `Part(Source.PROMPT, variant="pag:mid")`, and `pipeline.denoiser.Denoiser` runs the passes of each variant
    as their own UNet call under that variant (modes/pag.py, seg.py, autoguidance.py register theirs); the
    denoiser refuses a variant it does not know rather than run the plain UNet in its place.
    """

    source: Source
    index: int = 0  # which of the weighted prompts, for Source.WEIGHTED
    variant: str = ""

    def __repr__(self) -> str:
        text = f"{self.source.value}[{self.index}]" if self.source is Source.WEIGHTED else self.source.value
        return f"{text}@{self.variant}" if self.variant else text


UNCOND = Part(Source.BASELINE)
COND = Part(Source.PROMPT)
NEGATIVE = Part(Source.NEGATIVE)


def weighted_part(k: int) -> Part:
    """The prediction for the k-th (0-based) of `weighted_prompts`."""
    return Part(Source.WEIGHTED, k)


Predictions = Mapping[Part, Tensor]  # what one step computed for one request, each (B, 4, H/f, W/f)


class Params:
    """A mode's view of the settings: only the fields it declared (its `Param`s and its `uses`), read-only.

    Reading any other field raises AttributeError, so a mode cannot come to depend on the whole request.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"a mode sees only its declared fields ({', '.join(self._values)}); "
                                 f"add {name!r} to its params or `uses`") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Params are read-only")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Params) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))

    def __repr__(self) -> str:
        return f"Params({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"


@dataclass(frozen=True, slots=True)
class Param:
    """A mode's own setting: a `GenerationRequest` field, with its default, its allowed range and its control.

    One number, or (`length` > 0) a fixed number of them, e.g. FDG's scale per pyramid level: then `default`
    is a tuple of that length, `range` applies to each entry, and JSON, PNG metadata and links carry a list.
    """

    name: str
    label: str  # the page's control
    default: float | tuple[float, ...]
    range: tuple[float, float]
    step: float
    info: str = ""
    integer: bool = False
    length: int = 0  # 0: one number; n: a tuple of n floats

    def __post_init__(self) -> None:
        if self.length and (self.integer or not isinstance(self.default, tuple) or len(self.default) != self.length):
            raise ValueError(f"Param {self.name!r}: a tuple Param's default is a tuple of {self.length} floats")


@dataclass(frozen=True, slots=True)
class Scale:
    """How a mode's guidance scale differs from CFG's s, where it does (CFG++'s λ in [0, 1]): what the page's
    Guidance scale control is called, its allowed range and its info line."""

    symbol: str  # as the mode's formula writes it
    range: tuple[float, float]
    info: str
    # The CFG scale one step at this scale equals, from (scale, sigma, sigma_next) (`StepInfo`); the schedule
    # plot draws it in place of the scale. None: no such equivalence.
    equivalent: Callable[[float, float, float], float] | None = None


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What a step rule may read about the step being taken. sigma = sqrt((1 - alpha_bar) / alpha_bar), the
    noise level in the variance-exploding units every scheduler shares (Karras et al. 2022, eq. 1)."""

    scheduler: str  # the request's scheduler name: "euler", "ddim", ...
    sigma: float  # at the step's timestep
    sigma_next: float  # where the step lands (0 at the last step)
    prediction_type: str  # "epsilon" or "v_prediction"


class Combine(Protocol):
    """How a mode turns one step's predictions into its guided prediction."""

    def __call__(self, preds: Predictions, scale: float, params: Params, state: Any) -> Tensor: ...


class CombineAtStep(Protocol):
    """`combine` of a mode with `takes_step`: also told the 0-based index of the step it combines, as diffusers'
    guiders are by `set_state(step=...)` (None where no step is known)."""

    def __call__(self, preds: Predictions, scale: float, params: Params, state: Any, step: int | None) -> Tensor: ...


class StepRule(Protocol):
    """How the scheduler's step uses the predictions, where a mode changes it (CFG++: x0 from the guided
    prediction, renoised with eps_u). Returns the prediction the scheduler steps with, (B, 4, H/f, W/f). The
    mode's clean estimate (the event's `pred_x0`, the previews) stays x0 of the guided prediction: a step rule
    changes the renoising, not what the step believes the clean image is."""

    def __call__(self, guided: Tensor, preds: Predictions, params: Params, step: StepInfo) -> Tensor: ...


def _no_state(params: Params) -> None:
    return None


def _no_zero_steps(params: Params) -> int:
    return 0


def _no_problem(params: Params) -> tuple[str, str] | None:
    return None


# The general settings a mode's `check` may also read (beside its own): to refuse a combination before a run.
RUN_FIELDS: tuple[str, ...] = ("steps", "guidance_scale", "guidance_rescale", "guidance_schedule", "guidance_interval")


@dataclass(frozen=True, slots=True)
class Mode:
    """One guidance mode, everything about it in one place (its file under pipeline/guidance/modes/).

    Every callable receives `Params` (the mode's declared fields) and never the request.
    """

    name: str
    label: str  # the page's choice
    formula: str  # LaTeX between $$, then one or two sentences: what the page shows under the choice
    needs: Callable[[float, Params], tuple[Part, ...]]  # predictions at scale s, in UNet batch order
    combine: Combine | CombineAtStep
    reads: tuple[str, ...] = ("prompt",)  # the request's text fields it reads; each must not be empty
    params: tuple[Param, ...] = ()
    uses: tuple[str, ...] = ()  # other request fields its callables read (weighted: "weighted_prompts")
    baseline: Part = UNCOND  # what it guides away from: the guidance vector and decomposition use it
    # False: scale, schedule, interval and rescale do not apply; the scale reads 1 at every step.
    guided: bool = True
    new_state: Callable[[Params], Any] = _no_state  # per-run state, made afresh for every run
    zero_steps: Callable[[Params], int] = _no_zero_steps  # first steps whose prediction is 0
    # (field, detail) of a problem; sees its fields and RUN_FIELDS
    check: Callable[[Params], tuple[str, str] | None] = _no_problem
    step_rule: StepRule | None = None  # None: the scheduler steps with the guided prediction, as for CFG
    takes_step: bool = False  # True: `combine` also gets the step index (`CombineAtStep`)
    # True: `needs` also gets the 0-based step index as `step` (None where no step is known), for a mode whose
    # passes change with the step (SEG: diffusers' guider runs no perturbed pass at its first step)
    needs_step: bool = False
    scale: Scale | None = None  # None: the guidance scale is CFG's s
    # Request fields that other modes read and this one does not, each with why: the page greys the control and
    # says the reason in place of its info line (FDG's per-level scales replace the guidance scale).
    unused: tuple[tuple[str, str], ...] = ()

    @property
    def fields(self) -> tuple[str, ...]:
        """The settings fields this mode's callables see."""
        return tuple(param.name for param in self.params) + self.uses

    def parts(self, scale: float, params: Params, step: int | None = None) -> tuple[Part, ...]:
        """`needs` at 0-based step `step` (told only to a mode with `needs_step`)."""
        return self.needs(scale, params, step=step) if self.needs_step else self.needs(scale, params)

    def params_of(self, settings: Any, extra: Iterable[str] = ()) -> Params:
        """This mode's view of `settings` (a GenerationRequest or anything with its attributes)."""
        return Params({name: getattr(settings, name) for name in (*self.fields, *extra)})

    def check_of(self, settings: Any) -> tuple[str, str] | None:
        """`check` on this mode's fields and the general ones (`RUN_FIELDS`)."""
        return self.check(self.params_of(settings, RUN_FIELDS))


# --- helpers mode files share -----------------------------------------------------------------------------------


def two(baseline: Part) -> Callable[[float, Params], tuple[Part, ...]]:
    """CFG's needs with `baseline` as eps_u: s = 1 is exactly the prompt's prediction and s = 0 exactly the
    baseline's, so one UNet pass instead of two (diffusers' batch order otherwise: [baseline, prompt])."""

    def needs(scale: float, params: Params) -> tuple[Part, ...]:
        if scale == 1.0:
            return (COND,)
        if scale == 0.0:
            return (baseline,)
        return (baseline, COND)

    return needs


def alone(part: Part) -> tuple[Callable[[float, Params], tuple[Part, ...]], Combine]:
    """`needs` and `combine` of a mode that is one prediction alone, whatever the scale (one UNet pass)."""

    def needs(scale: float, params: Params) -> tuple[Part, ...]:
        return (part,)

    def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
        return preds[part]

    return needs, combine


def both_unless_one(scale: float, params: Params) -> tuple[Part, ...]:
    """APG and CFG-Zero* reduce to the prompt's prediction at s = 1 only."""
    return (COND,) if scale == 1.0 else (UNCOND, COND)


def guidance_stats(noise_pred_cond: Tensor, noise_pred_uncond: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image size of the guidance vector ||eps_c - eps_u|| and cosine(eps_c, eps_u), each (B,)."""
    cond = noise_pred_cond.flatten(1).float()
    uncond = noise_pred_uncond.flatten(1).float()
    norm = (cond - uncond).norm(dim=1)
    cosine = torch.nn.functional.cosine_similarity(cond, uncond, dim=1)
    return norm, cosine
