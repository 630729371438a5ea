"""Guidance modes: their formulas as pure functions of noise predictions, and the table that describes each.

One scale convention everywhere: diffusers'/Imagen's `s`, where s = 1 means no guidance. Shapes are
(B, 4, H/f, W/f) throughout.

`GUIDANCE_MODES` is each mode's one home: its name, label and formula text, the predictions it needs at a
given scale, how it combines them, its own parameters (each a `GenerationRequest` field, with default and
range), and its per-run state. The loop, request validation, the plan of UNet passes and the UI all read
it. To add a mode, write its formula here and add an entry; its parameters become request fields and
appear in the API on their own, and the page needs at most a control for them.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

import torch
from torch import Tensor

from . import methods

if TYPE_CHECKING:
    from .request import GenerationRequest


# --- the formulas ---------------------------------------------------------------------------------------------


def cfg(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6); scale 1 returns the conditional prediction."""
    return noise_pred_uncond + scale * (noise_pred_cond - noise_pred_uncond)


def reversed_cfg(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scale: float) -> Tensor:
    """Guidance pointed away from the prompt: eps_u + s*(eps_u - eps_c).

    Algebraically this is CFG with the roles of the two predictions swapped at scale 1 + s, which is how the
    parity tests reproduce it with diffusers.
    """
    return noise_pred_uncond + scale * (noise_pred_uncond - noise_pred_cond)


def perp_neg(
    noise_pred_cond: Tensor, noise_pred_uncond: Tensor, noise_pred_neg: Tensor, scale: float, neg_scale: float
) -> Tensor:
    """Perp-Neg (Armandpour et al. 2023, arXiv 2304.04968): CFG, minus `neg_scale` times the part of the
    negative direction eps_n - eps_u that is perpendicular to the prompt's guidance eps_c - eps_u.

    The part parallel to the prompt's guidance is dropped, so a negative prompt that shares concepts with the
    prompt no longer cancels them. The projection is per image (over C, H, W), so an image does not depend on
    its batch; where eps_c = eps_u there is no direction to project on, and the whole negative direction is used.
    """
    pos = noise_pred_cond - noise_pred_uncond
    neg = noise_pred_neg - noise_pred_uncond
    # The dot products in float32: an fp16 sum over 4 x 128 x 128 values overflows.
    dot = (neg.flatten(1).float() * pos.flatten(1).float()).sum(dim=1)
    norm2 = pos.flatten(1).float().square().sum(dim=1)
    coef = torch.where(norm2 > 0, dot / norm2, torch.zeros_like(norm2))
    perp = neg - coef.to(pos.dtype).view(-1, *(1,) * (pos.ndim - 1)) * pos
    return noise_pred_uncond + scale * pos - neg_scale * perp


def weighted(noise_preds: list[Tensor], weights: list[float], noise_pred_uncond: Tensor | None) -> Tensor:
    """Weighted prompts (Crowson's `cfg_sample`): sum_i w_i eps_i + (1 - sum_i w_i) eps_u.

    One prompt at weight w is exactly CFG at scale w. The baseline may be None when its weight is 0.
    """
    baseline_weight = 1.0 - sum(weights)
    result = noise_pred_uncond * baseline_weight if noise_pred_uncond is not None else 0.0  # None: weight ~0
    for noise_pred, weight in zip(noise_preds, weights):
        result = result + weight * noise_pred
    return result


def guidance_stats(noise_pred_cond: Tensor, noise_pred_uncond: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image size of the guidance vector ||eps_c - eps_u|| and cosine(eps_c, eps_u), each (B,)."""
    cond = noise_pred_cond.flatten(1).float()
    uncond = noise_pred_uncond.flatten(1).float()
    norm = (cond - uncond).norm(dim=1)
    cosine = torch.nn.functional.cosine_similarity(cond, uncond, dim=1)
    return norm, cosine


# --- what a mode is made of ------------------------------------------------------------------------------------


class Source(enum.Enum):
    """What a UNet prediction is conditioned on."""

    BASELINE = "baseline"  # SDXL's all-zero embeddings, or the encoded empty prompt (the request's `uncond`)
    PROMPT = "prompt"  # prompt and prompt_2
    NEGATIVE = "negative"  # negative_prompt and negative_prompt_2
    WEIGHTED = "weighted"  # one of weighted_prompts


@dataclass(frozen=True, slots=True)
class Part:
    """One prediction a step can ask the UNet for."""

    source: Source
    index: int = 0  # which of the weighted prompts, for Source.WEIGHTED

    def __repr__(self) -> str:
        return f"{self.source.value}[{self.index}]" if self.source is Source.WEIGHTED else self.source.value


UNCOND = Part(Source.BASELINE)
COND = Part(Source.PROMPT)
NEGATIVE = Part(Source.NEGATIVE)

Predictions = Mapping[Part, Tensor]  # what one step computed for one request, each (B, 4, H/f, W/f)


class Combine(Protocol):
    """How a mode turns one step's predictions into the noise prediction the scheduler steps with."""

    def __call__(self, preds: Predictions, scale: float, request: GenerationRequest, state: Any) -> Tensor: ...


@dataclass(frozen=True, slots=True)
class Param:
    """A mode's own setting: a `GenerationRequest` field, with its default, its allowed range and its control."""

    name: str
    label: str  # the page's control
    default: float
    range: tuple[float, float]
    step: float
    info: str = ""
    integer: bool = False


def _no_state(request: GenerationRequest) -> None:
    return None


def _no_zero_steps(request: GenerationRequest) -> int:
    return 0


def _no_problem(request: GenerationRequest) -> tuple[str, str] | None:
    return None


@dataclass(frozen=True, slots=True)
class Mode:
    """One guidance mode, everything about it in one place."""

    name: str
    label: str  # the page's choice
    formula: str  # LaTeX between $$, then one or two sentences: what the page shows under the choice
    needs: Callable[[float, GenerationRequest], tuple[Part, ...]]  # predictions at scale s, in UNet batch order
    combine: Combine
    reads: tuple[str, ...] = ("prompt",)  # the request's text fields it reads; each must not be empty
    params: tuple[Param, ...] = ()
    baseline: Part = UNCOND  # what it guides away from: the guidance vector and decomposition use it
    # False: scale, schedule, interval and rescale do not apply; the scale reads 1 at every step.
    guided: bool = True
    new_state: Callable[[GenerationRequest], Any] = _no_state  # per-run state, made afresh for every run
    zero_steps: Callable[[GenerationRequest], int] = _no_zero_steps  # first steps whose prediction is 0
    check: Callable[[GenerationRequest], tuple[str, str] | None] = _no_problem  # (field, detail) of a problem


# --- the modes -------------------------------------------------------------------------------------------------


def _two(baseline: Part) -> Callable[[float, GenerationRequest], tuple[Part, ...]]:
    """CFG's needs with `baseline` as eps_u: s = 1 is exactly the prompt's prediction and s = 0 exactly the
    baseline's, so one UNet pass instead of two (diffusers' batch order otherwise: [baseline, prompt])."""

    def needs(scale: float, request: GenerationRequest) -> tuple[Part, ...]:
        if scale == 1.0:
            return (COND,)
        if scale == 0.0:
            return (baseline,)
        return (baseline, COND)

    return needs


def _both_unless_one(scale: float, request: GenerationRequest) -> tuple[Part, ...]:
    """APG and CFG-Zero* reduce to the prompt's prediction at s = 1 only."""
    return (COND,) if scale == 1.0 else (UNCOND, COND)


def _cfg(preds: Predictions, scale: float, request: GenerationRequest, state: Any) -> Tensor:
    return cfg(preds[COND], preds[UNCOND], scale)


def _reversed_needs(scale: float, request: GenerationRequest) -> tuple[Part, ...]:
    return (UNCOND,) if scale == 0.0 else (UNCOND, COND)


def _reversed(preds: Predictions, scale: float, request: GenerationRequest, state: Any) -> Tensor:
    return reversed_cfg(preds[COND], preds[UNCOND], scale)


def _negative_direction(preds: Predictions, scale: float, request: GenerationRequest, state: Any) -> Tensor:
    """CFG whose baseline is another prompt's prediction: what diffusers' `negative_prompt` does."""
    return cfg(preds[COND], preds[NEGATIVE], scale)


def _perp_neg_needs(scale: float, request: GenerationRequest) -> tuple[Part, ...]:
    if request.perp_neg_scale == 0.0:  # no negative term: plain CFG
        return _two(UNCOND)(scale, request)
    return (UNCOND, COND, NEGATIVE)


def _perp_neg(preds: Predictions, scale: float, request: GenerationRequest, state: Any) -> Tensor:
    if NEGATIVE not in preds:
        return cfg(preds[COND], preds[UNCOND], scale)
    return perp_neg(preds[COND], preds[UNCOND], preds[NEGATIVE], scale, request.perp_neg_scale)


def _cond_only(preds: Predictions, scale: float, request: GenerationRequest, state: Any) -> Tensor:
    """The conditional prediction alone: what the model does with no guidance (diffusers at s <= 1)."""
    return preds[COND]


def _uncond_only(preds: Predictions, scale: float, request: GenerationRequest, state: Any) -> Tensor:
    """The baseline prediction alone: the model's unconditional sample."""
    return preds[UNCOND]


def _apg_state(request: GenerationRequest) -> methods.MomentumBuffer | None:
    # One buffer per run, as diffusers' guider makes it at step 0 (its `prepare_inputs`); 0 means no momentum.
    return methods.MomentumBuffer(request.apg_momentum) if request.apg_momentum else None


def _apg(preds: Predictions, scale: float, request: GenerationRequest, state: Any) -> Tensor:
    return methods.apg(preds[COND], preds[UNCOND], scale, state, request.apg_eta, request.apg_norm_threshold)


def _zero_star(preds: Predictions, scale: float, request: GenerationRequest, state: Any) -> Tensor:
    return methods.cfg_zero_star(preds[COND], preds[UNCOND], scale)


def _tcfg(preds: Predictions, scale: float, request: GenerationRequest, state: Any) -> Tensor:
    return methods.tcfg(preds[COND], preds[UNCOND], scale)


def _magnitude_aware(preds: Predictions, scale: float, request: GenerationRequest, state: Any) -> Tensor:
    return methods.magnitude_aware(preds[COND], preds[UNCOND], scale, request.mag_alpha)


def _apg_mix_state(request: GenerationRequest) -> methods.ApgMixState:
    momentum = request.apg_mix_momentum
    return methods.ApgMixState(methods.apg_mix_guider.MomentumBuffer(momentum) if momentum else None)


def _apg_mix(preds: Predictions, scale: float, request: GenerationRequest, state: Any) -> Tensor:
    if not isinstance(state, methods.ApgMixState):
        from .request import RequestError  # here: request.py imports this module

        raise RequestError("mode", "'apg_mix' counts its steps and momentum from the run's start: a step cannot be "
                                   "recombined into it, nor a run forked into it part way")
    step, state.step = state.step, state.step + 1
    return methods.apg_mix(preds[COND], preds[UNCOND], scale, step, request.apg_mix_start_step, state.buffer,
                           request.apg_mix_eta, request.apg_mix_norm_threshold)


def _apg_mix_check(request: GenerationRequest) -> tuple[str, str] | None:
    # Every step from the first must combine, or the step count that picks CFG or APG falls behind.
    if request.guidance_interval[0] != 0.0:
        return "guidance_interval", "must start at 0 in mode 'apg_mix' (it counts its steps from the first)"
    if request.guidance_schedule != "constant":
        return "guidance_schedule", "must be constant in mode 'apg_mix' (its start step switches CFG to APG)"
    return None


def _zero_init_steps(request: GenerationRequest) -> int:
    return request.zero_init_steps


def _zero_star_check(request: GenerationRequest) -> tuple[str, str] | None:
    if request.zero_init_steps >= request.steps:
        # every step would predict zero: no UNet pass at all, and the "image" is the starting noise scaled
        return ("zero_init_steps", f"must be less than steps ({request.steps}) in mode 'cfg_zero_star', "
                                   f"got {request.zero_init_steps}: every step would predict zero")
    return None


def weighted_part(k: int) -> Part:
    """The prediction for the k-th (0-based) of `weighted_prompts`."""
    return Part(Source.WEIGHTED, k)


def _weighted_needs(scale: float, request: GenerationRequest) -> tuple[Part, ...]:
    parts = tuple(weighted_part(k) for k, (_, w) in enumerate(request.weighted_prompts) if w != 0.0)
    # Weights like (0.7, 0.2, 0.1) leave a baseline weight of 1e-16, not 0: no pass is worth that.
    baseline = not math.isclose(request.baseline_weight, 0.0, abs_tol=1e-9)
    return ((UNCOND,) if baseline else ()) + parts


def _weighted(preds: Predictions, scale: float, request: GenerationRequest, state: Any) -> Tensor:
    used = [(preds[weighted_part(k)], w) for k, (_, w) in enumerate(request.weighted_prompts) if w != 0.0]
    return weighted([p for p, _ in used], [w for _, w in used], preds.get(UNCOND))


def _weighted_check(request: GenerationRequest) -> tuple[str, str] | None:
    if not request.weighted_prompts:
        return "weighted_prompts", "mode 'weighted' needs at least one (prompt, weight) pair"
    for name, unused in (("guidance_rescale", request.guidance_rescale != 0.0),
                         ("guidance_schedule", request.guidance_schedule != "constant"),
                         ("guidance_interval", tuple(request.guidance_interval) != (0.0, 1.0))):
        if unused:  # the weights are the whole rule: say so rather than ignore these
            return name, "is not used by mode 'weighted' (its weights set the guidance); reset it"
    return None


_MODES = (
    Mode(
        "cfg", "Standard CFG",
        r"$$\hat\epsilon = \epsilon_u + s\,(\epsilon_c - \epsilon_u)$$ Ho & Salimans (2022): step from the "
        r"baseline towards the prompt, $s$ times as far. $s = 1$ is the plain conditional model.",
        _two(UNCOND), _cfg,
    ),
    Mode(
        "reversed", "Reversed guidance",
        r"$$\hat\epsilon = \epsilon_u + s\,(\epsilon_u - \epsilon_c)$$ The same step, pointed away "
        r"from the prompt: what the image looks like when guidance pushes against it.",
        _reversed_needs, _reversed,
    ),
    Mode(
        "negative_direction", "Custom negative direction",
        r"$$\hat\epsilon = \epsilon_n + s\,(\epsilon_c - \epsilon_n)$$ The negative "
        r"prompt's prediction $\epsilon_n$ replaces the baseline: guidance moves towards the prompt and away from it.",
        _two(NEGATIVE), _negative_direction, reads=("prompt", "negative_prompt"), baseline=NEGATIVE,
    ),
    Mode(
        "perp_neg", "Perp-Neg (perpendicular negative)",
        r"$$\hat\epsilon = \epsilon_u + s\,(\epsilon_c - \epsilon_u) - s_n\,(\epsilon_n - \epsilon_u)_\perp$$ "
        r"Armandpour et al. (2023): only the part of the negative direction $\epsilon_n - \epsilon_u$ that is "
        r"perpendicular to the prompt's guidance $\epsilon_c - \epsilon_u$ is subtracted, so a negative prompt "
        r"that shares concepts with the prompt no longer cancels them. Three UNet passes per step.",
        _perp_neg_needs, _perp_neg, reads=("prompt", "negative_prompt"),
        params=(Param("perp_neg_scale", "Perp-Neg negative scale", 6.5, (0.0, 50.0), 0.5,
                      "s_n: how hard to push away from the negative prompt. 6.5 matches the weight a negative "
                      "prompt gets in CFG at scale 7.5 (s - 1)."),),
    ),
    Mode(
        "cond_only", "Conditional only",
        r"$$\hat\epsilon = \epsilon_c$$ The conditional prediction alone, no guidance (one UNet "
        r"pass per step). The scale is ignored.",
        lambda scale, request: (COND,), _cond_only, guided=False,
    ),
    Mode(
        "uncond_only", "Unconditional only",
        r"$$\hat\epsilon = \epsilon_u$$ The baseline alone: the model's unconditional sample "
        r"(one UNet pass per step). The prompt and scale are ignored.",
        lambda scale, request: (UNCOND,), _uncond_only, reads=(), guided=False,
    ),
    Mode(
        "apg", "APG (adaptive projected)",
        r"$$\hat\epsilon = \epsilon_u + s\,(\Delta_\perp + \eta\,\Delta_\parallel)$$ Sadat et al. (2024): "
        r"$\Delta = \epsilon_c - \epsilon_u$ with momentum, its norm capped, split into the parts parallel and "
        r"orthogonal to $\epsilon_c$. Damping the parallel part avoids CFG's oversaturation at high $s$.",
        _both_unless_one, _apg,
        params=(
            Param("apg_eta", "APG eta", 0.0, (0.0, 1.0), 0.05,
                  "Weight of the update's part parallel to ε_c (the paper: 0)."),
            Param("apg_momentum", "APG momentum", -0.5, (-1.0, 1.0), 0.05, "Negative momentum over steps (0: none)."),
            Param("apg_norm_threshold", "APG norm threshold", 15.0, (0.0, 100.0), 0.5,
                  "Caps the update's norm (0: no cap)."),
        ),
        new_state=_apg_state,
    ),
    Mode(
        "cfg_zero_star", "CFG-Zero*",
        r"$$\hat\epsilon = s^*\epsilon_u + s\,(\epsilon_c - s^*\epsilon_u),\quad "
        r"s^* = \frac{\langle \epsilon_c, \epsilon_u\rangle}{\lVert \epsilon_u \rVert^2}$$ Fan et al. (2025): the "
        r"baseline rescaled to best match the prompt's prediction, and the first steps' prediction set to zero.",
        _both_unless_one, _zero_star,
        params=(Param("zero_init_steps", "Zero-init steps", 1, (0, 200), 1,
                      "CFG-Zero*: the first steps predict zero (no UNet pass).", integer=True),),
        zero_steps=_zero_init_steps, check=_zero_star_check,
    ),
    Mode(
        "tcfg", "Tangential CFG (TCFG)",
        r"$$\hat\epsilon = \tilde\epsilon_u + s\,(\epsilon_c - \tilde\epsilon_u),\quad "
        r"\tilde\epsilon_u = v_1 v_1^\top \epsilon_u$$ Kwon et al. (2025): $v_1$ is the first right singular "
        r"vector of the matrix $[\epsilon_c; \epsilon_u]$. The baseline keeps only the direction it shares with the "
        r"prompt's prediction; its tangential part, which pulls samples off the data, is dropped.",
        _both_unless_one, _tcfg,
    ),
    Mode(
        "magnitude_aware", "MAMBO-G (magnitude-aware)",
        r"$$\hat\epsilon = \epsilon_u + s_t\,(\epsilon_c - \epsilon_u),\quad s_t = 1 + (s - 1)\,"
        r"e^{-\alpha\,\lVert \epsilon_c - \epsilon_u \rVert / \lVert \epsilon_u \rVert}$$ MAMBO-G (2025): "
        r"where the guidance update is large next to the baseline, at the first noisy steps, the scale falls "
        r"towards 1; $\alpha = 0$ is plain CFG.",
        _both_unless_one, _magnitude_aware,
        params=(Param("mag_alpha", "MAMBO-G alpha", 8.0, (0.0, 100.0), 0.5,
                      "α: how fast the scale falls to 1 as the update grows (0: plain CFG)."),),
    ),
    Mode(
        "apg_mix", "APG mix (CFG, then APG)",
        r"$$\hat\epsilon = \begin{cases}\epsilon_u + s\,\Delta & t \le t_0 \\ "
        r"\epsilon_u + s\,(\Delta_\perp + \eta\,\Delta_\parallel) & t > t_0\end{cases}$$ "
        r"diffusers' AdaptiveProjectedMixGuidance (HunyuanImage 2.1): plain CFG for the first steps, which set the "
        r"composition, then APG (Sadat et al. 2024), whose momentum has followed the CFG steps all along.",
        _both_unless_one, _apg_mix,
        params=(
            Param("apg_mix_start_step", "APG mix start step", 5, (0, 200), 1,
                  "Steps 0 to this one (0-based) use CFG; APG after.", integer=True),
            Param("apg_mix_eta", "APG mix eta", 0.0, (0.0, 1.0), 0.05, "Weight of the update's part parallel to ε_c."),
            Param("apg_mix_momentum", "APG mix momentum", -0.5, (-1.0, 1.0), 0.05,
                  "Momentum over steps, CFG's included (0: none)."),
            Param("apg_mix_norm_threshold", "APG mix norm threshold", 10.0, (0.0, 100.0), 0.5,
                  "Caps the APG update's norm (0: no cap)."),
        ),
        new_state=_apg_mix_state, check=_apg_mix_check,
    ),
    Mode(
        "weighted", "Weighted prompts",
        r"$$\hat\epsilon = \textstyle\sum_i w_i\,\epsilon_i + (1 - \sum_i w_i)\,\epsilon_u$$ "
        r"Crowson's cfg_sample: each prompt pulls with its weight; one prompt at weight $w$ is CFG at scale $w$.",
        _weighted_needs, _weighted, reads=(), guided=False, check=_weighted_check,
    ),
)
GUIDANCE_MODES: dict[str, Mode] = {mode.name: mode for mode in _MODES}
# Every mode's parameters by name: each is a GenerationRequest field, checked whatever the mode.
MODE_PARAMS: dict[str, Param] = {param.name: param for mode in _MODES for param in mode.params}


def guidance_mode(name: str) -> Mode:
    """The table entry of mode `name`."""
    if name not in GUIDANCE_MODES:
        raise ValueError(f"mode: must be one of {', '.join(GUIDANCE_MODES)}, got {name!r}")
    return GUIDANCE_MODES[name]
