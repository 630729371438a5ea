"""APG: adaptive projected guidance, Sadat et al. (2024, arXiv 2410.02416, Algorithm 1) ↔ diffusers
`AdaptiveProjectedGuidance`, whose module-level `normalized_guidance` this calls.

diffusers' guider keeps its momentum buffer in the guider object, made in `prepare_inputs` at step 0. Here it
is the mode's per-run state (`new_state`), made afresh for every run and updated only on the steps where APG
runs, exactly as the guider does it.
"""

from __future__ import annotations

from typing import Any

from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance
from torch import Tensor

from ..base import COND, UNCOND, Mode, Param, Params, Predictions, both_unless_one

ORDER = 70


def apg(
    noise_pred_cond: Tensor,
    noise_pred_uncond: Tensor,
    scale: float,
    momentum_buffer: MomentumBuffer | None = None,
    eta: float = 0.0,
    norm_threshold: float = 15.0,
) -> Tensor:
    """Adaptive projected guidance (Sadat et al. 2024, arXiv 2410.02416, Algorithm 1): the CFG update with
    its component parallel to eps_c scaled by `eta`, its norm capped, and negative momentum over steps."""
    return normalized_guidance(noise_pred_cond, noise_pred_uncond, scale, momentum_buffer, eta, norm_threshold)


def new_state(params: Params) -> MomentumBuffer | None:
    # One buffer per run, as diffusers' guider makes it at step 0 (its `prepare_inputs`); 0 means no momentum.
    return MomentumBuffer(params.apg_momentum) if params.apg_momentum else None


def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
    return apg(preds[COND], preds[UNCOND], scale, state, params.apg_eta, params.apg_norm_threshold)


MODE = Mode(
    "apg", "APG (adaptive projected)",
    r"$$\hat\epsilon = \epsilon_u + s\,(\Delta_\perp + \eta\,\Delta_\parallel)$$ Sadat et al. (2024): "
    r"$\Delta = \epsilon_c - \epsilon_u$ with momentum, its norm capped, split into the parts parallel and "
    r"orthogonal to $\epsilon_c$. Damping the parallel part avoids CFG's oversaturation at high $s$.",
    both_unless_one, combine,
    params=(
        Param("apg_eta", "APG eta", 0.0, (0.0, 1.0), 0.05,
              "Weight of the update's part parallel to ε_c (the paper: 0)."),
        Param("apg_momentum", "APG momentum", -0.5, (-1.0, 1.0), 0.05, "Negative momentum over steps (0: none)."),
        Param("apg_norm_threshold", "APG norm threshold", 15.0, (0.0, 100.0), 0.5,
              "Caps the update's norm (0: no cap)."),
    ),
    new_state=new_state,
)
