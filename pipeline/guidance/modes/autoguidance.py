"""Autoguidance: Karras et al. (2024, arXiv 2406.02507, eq. 1) ↔ diffusers `AutoGuidance`, added to CFG.

Guide the model away from a *weaker version of itself*, with the same conditioning:
    eps_hat = eps_u + s (eps_c - eps_u) + s_a (eps_c - eps_c^weak).
At s = 1 this is the paper's D_w = w D_1 + (1 - w) D_0 with w = 1 + s_a: the weak model's errors resemble the
strong one's, only larger, so their difference points at what the strong model gets wrong, and (unlike CFG,
whose unconditional model differs in *what* it models) stepping away from it improves quality without pulling
every seed onto the prompt's likeliest images. The paper: the spread of samples is kept.

The weak model:
- SDXL (any real UNet): diffusers' layer skip (`LayerSkipConfig`, as `AutoGuidance` applies it) on every
  transformer block of the UNet's mid block (SDXL: 10 blocks of self-attention, cross-attention and
  feed-forward at the lowest resolution, 32x32 latents at 1024 px), so the weak model is the same network with
  its deepest, most global layers gone: the nearest thing to Karras et al.'s smaller model that a single
  checkpoint holds. The mid block is our choice; diffusers names none for UNets.
- the toy world: the exact denoiser of the *blurred* data (`ToyUNet.blurred`: each item's Gaussian widened
  by `WEAK_WIDTH`, in closed form), a model that learned the same data less sharply.

diffusers' `AutoGuidance` puts the weak model on its unconditional batch (the negative prompt's embeddings) and
computes eps_weak + w (eps_c - eps_weak) in place of CFG: with the negative prompt equal to the prompt, that
is the formula above at s = 1, and tests/parity checks it so.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from diffusers.hooks import HookRegistry, LayerSkipConfig
from diffusers.hooks.layer_skip import _apply_layer_skip_hook

from ...denoiser import VARIANTS
from ...models.toy import ToyUNet
from ..base import Mode, Param, Params
from ._perturbed import combine_for, needs_for

ORDER = 180
HOOK = "cfg_explorer_autoguidance"
STACK = "mid_block.attentions.0.transformer_blocks"  # the weak model skips every block of this stack


def mid_block_skip(unet: torch.nn.Module) -> LayerSkipConfig:
    """diffusers' layer-skip config for the weak model: every transformer block of the mid block, whole."""
    return LayerSkipConfig(list(range(len(unet.get_submodule(STACK)))), fqn=STACK, skip_attention=True,
                           skip_ff=True, dropout=1.0)


def variant(params: Params) -> str:
    return "autoguidance"


@contextlib.contextmanager
def weakened(unet: torch.nn.Module) -> Iterator[None]:
    """The weak model: the toy's blurred-data denoiser, or a real UNet without its mid block's transformer."""
    if isinstance(unet, ToyUNet):
        with unet.blurred():
            yield
        return
    registry = HookRegistry.check_if_exists_or_initialize(unet)
    try:
        _apply_layer_skip_hook(unet, mid_block_skip(unet), name=HOOK)
        yield
    finally:
        registry.remove_hook(HOOK, recurse=True)


VARIANTS["autoguidance"] = weakened


MODE = Mode(
    "autoguidance", "Autoguidance (weaker model)",
    r"$$\hat\epsilon = \epsilon_u + s\,(\epsilon_c - \epsilon_u) + s_a\,(\epsilon_c - \epsilon^{\mathrm{weak}}_c)$$ "
    r"Karras et al. (2024): guide away from a weaker version of the model with the same prompt. At $s = 1$ it "
    r"**replaces** CFG: quality without pulling every seed onto the prompt's likeliest images; $s > 1$ adds "
    r"CFG's pull. Weak model: SDXL without its mid block's transformer; in the toy world, the exact denoiser "
    r"of blurred data. **A third UNet pass per step** (two at $s = 1$).",
    needs_for(variant, "auto_scale"), combine_for("auto_scale"),
    params=(
        Param("auto_scale", "Autoguidance scale", 1.0, (0.0, 20.0), 0.5,
              "s_a: how hard to step away from the weak model (w = 1 + s_a in Karras et al.; 0: plain CFG). "
              "Costs one more UNet pass per step."),
    ),
)
