"""SEG: Smoothed Energy Guidance, Hong (2024, arXiv 2408.00760) ↔ diffusers `SmoothedEnergyGuidance`, added to
CFG as that guider's `forward` adds it.

The perturbed model blurs the self-attention queries of the chosen blocks with a Gaussian of `seg_blur_sigma`
(over the latent grid), which flattens the attention's energy landscape; above 9999 the blur is infinite and
every query is the mean one (uniform attention). Guiding away from it sharpens structure, as PAG does, with
the blur as a continuous knob. The variant pass runs the prompt's prediction under diffusers' own hook
(`SmoothedEnergyGuidanceHook`, via `_apply_smoothed_energy_guidance_hook`) on the self-attention layers of the
UNet's mid block, as the SEG paper's SDXL code does (`seg_applied_layers=["mid"]`).

diffusers' guider turns SEG on only where `int(start * N) < step` (strictly): with start 0 its first step is
plain CFG. `needs` follows it (`needs_step`), so that step costs two passes, not three.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator

import torch
from diffusers.guiders import SmoothedEnergyGuidance
from diffusers.hooks import HookRegistry
from diffusers.hooks.smoothed_energy_guidance_utils import (
    SmoothedEnergyGuidanceConfig,
    _apply_smoothed_energy_guidance_hook,
)

from ...denoiser import VARIANT_LIMITS, VARIANTS
from ..base import Mode, Param, Params
from ._perturbed import combine_for, needs_for, no_attention

ORDER = 170
HOOK = "cfg_explorer_seg"
STACK = "mid_block.attentions.0.transformer_blocks"  # the blocks SEG perturbs: every one of the mid block's
# diffusers' defaults, read from the guider's signature rather than copied
_DEFAULTS = {name: p.default for name, p in inspect.signature(SmoothedEnergyGuidance.__init__).parameters.items()}


def mid_block_config(unet: torch.nn.Module) -> SmoothedEnergyGuidanceConfig:
    """diffusers' config for SEG on every transformer block of the UNet's mid block (SDXL: 10; the tiny: 1)."""
    return SmoothedEnergyGuidanceConfig(list(range(len(unet.get_submodule(STACK)))), fqn=STACK)


def variant(params: Params) -> str:
    return f"seg:{params.seg_blur_sigma!r}"


@contextlib.contextmanager
def smoothed(unet: torch.nn.Module, arg: str = repr(_DEFAULTS["seg_blur_sigma"])) -> Iterator[None]:
    """The UNet with its mid block's self-attention queries blurred by sigma = float(arg) (bare "seg": diffusers'
    default sigma)."""
    registry = HookRegistry.check_if_exists_or_initialize(unet)
    try:
        _apply_smoothed_energy_guidance_hook(unet, mid_block_config(unet), float(arg), name=HOOK)
        yield
    finally:
        registry.remove_hook(HOOK, recurse=True)


VARIANTS["seg"] = smoothed
VARIANT_LIMITS["seg"] = no_attention


MODE = Mode(
    "seg", "SEG (smoothed energy)",
    r"$$\hat\epsilon = \epsilon_u + s\,(\epsilon_c - \epsilon_u) + s_e\,(\epsilon_c - \tilde\epsilon_c)$$ "
    r"Hong (2024): $\tilde\epsilon_c$ is the prompt's prediction with the mid block's self-attention queries "
    r"blurred (Gaussian of $\sigma$; infinite above 9999), which flattens attention; stepping away from it "
    r"sharpens structure. It **adds to** CFG ($s = 1$: SEG alone). **A third UNet pass per step** (two at "
    r"$s = 1$; none extra at the first step, as in diffusers' guider).",
    needs_for(variant, "seg_scale", skip_first_step=True), combine_for("seg_scale"),
    params=(
        Param("seg_scale", "SEG scale", float(_DEFAULTS["seg_guidance_scale"]), (0.0, 20.0), 0.1,
              "s_e: how hard to step away from the blurred-attention prediction (diffusers' default). 0: plain "
              "CFG. Costs a third UNet pass per step."),
        Param("seg_blur_sigma", "SEG blur sigma", float(_DEFAULTS["seg_blur_sigma"]), (0.0, 1e7), 1.0,
              "σ of the query blur, in latent tokens; above 9999 the blur is infinite (diffusers' default: "
              "9999999)."),
    ),
    needs_step=True,
)
