"""APG mix: CFG up to a start step, then adaptive projected guidance (Sadat et al. 2024, arXiv 2410.02416) ↔
diffusers `AdaptiveProjectedMixGuidance` (as HunyuanImage 2.1 uses it), whose module-level
`update_momentum_buffer` and `normalized_guidance` this calls.

The guider reads its step index from `set_state(step=...)`; this mode is told it the same way (`takes_step`), so
a delayed interval start or a schedule (steps that do not combine) leaves the CFG/APG switch where it belongs.
A step cannot be recombined into this mode, nor a run forked into it, part way: its momentum starts with the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusers.guiders.adaptive_projected_guidance_mix import (
    MomentumBuffer,
    normalized_guidance,
    update_momentum_buffer,
)
from torch import Tensor

from ..base import COND, UNCOND, Mode, Param, Params, Predictions, both_unless_one

ORDER = 140


@dataclass(slots=True)
class ApgMixState:
    """One run's momentum buffer (None: no momentum)."""

    buffer: MomentumBuffer | None


def apg_mix(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scale: float, step: int, start_step: int,
            buffer: MomentumBuffer | None, eta: float = 0.0, norm_threshold: float = 10.0) -> Tensor:
    """CFG at 0-based steps 0..`start_step`, then APG (Sadat et al. 2024, arXiv 2410.02416, Algorithm 1), as
    diffusers' `AdaptiveProjectedMixGuidance`: the CFG steps already feed the momentum buffer, so APG starts
    from their running average. One scale for both phases (the guider's two, set equal)."""
    if step <= start_step:
        update_momentum_buffer(noise_pred_cond, noise_pred_uncond, buffer)
        return noise_pred_uncond + scale * (noise_pred_cond - noise_pred_uncond)
    return normalized_guidance(noise_pred_cond, noise_pred_uncond, scale, buffer, eta, norm_threshold)


def new_state(params: Params) -> ApgMixState:
    return ApgMixState(MomentumBuffer(params.apg_mix_momentum) if params.apg_mix_momentum else None)


def combine(preds: Predictions, scale: float, params: Params, state: Any, step: int | None) -> Tensor:
    if not isinstance(state, ApgMixState) or step is None:  # a what-if, or a fork from another mode: no momentum
        raise ValueError("mode: 'apg_mix' carries its momentum from the run's start: a step cannot be "
                         "recombined into it, nor a run forked into it part way")
    return apg_mix(preds[COND], preds[UNCOND], scale, step, params.apg_mix_start_step, state.buffer,
                   params.apg_mix_eta, params.apg_mix_norm_threshold)


MODE = Mode(
    "apg_mix", "APG mix (CFG, then APG)",
    r"$$\hat\epsilon = \begin{cases}\epsilon_u + s\,\Delta & i \le i_0 \\ "
    r"\epsilon_u + s\,(\Delta_\perp + \eta\,\Delta_\parallel) & i > i_0\end{cases}$$ "
    r"diffusers' AdaptiveProjectedMixGuidance (HunyuanImage 2.1): plain CFG for the first steps, which set the "
    r"composition, then APG (Sadat et al. 2024), whose momentum has followed the CFG steps all along.",
    both_unless_one, combine,
    params=(
        Param("apg_mix_start_step", "APG mix start step", 5, (0, 200), 1,
              "Steps 0 to this one (0-based) use CFG; APG after.", integer=True),
        Param("apg_mix_eta", "APG mix eta", 0.0, (0.0, 1.0), 0.05, "Weight of the update's part parallel to ε_c."),
        Param("apg_mix_momentum", "APG mix momentum", -0.5, (-1.0, 1.0), 0.05,
              "Momentum over steps, CFG's included (0: none)."),
        Param("apg_mix_norm_threshold", "APG mix norm threshold", 10.0, (0.0, 100.0), 0.5,
              "Caps the APG update's norm (0: no cap)."),
    ),
    new_state=new_state, takes_step=True,
)
