"""PAG: Perturbed-Attention Guidance, Ahn et al. (2024, arXiv 2403.17377, eq. 9) ↔ diffusers'
`StableDiffusionXLPAGPipeline` (pag_scale, pag_applied_layers), added to CFG as that pipeline adds it.

The perturbed model is the UNet with the self-attention map of the chosen blocks replaced by the identity
(each token attends only to itself, so the layer outputs its value projection): the paper's "perturbed
self-attention", which keeps the image's content and breaks its structure. Guiding away from it sharpens
structure without a negative prompt. The variant pass runs the prompt's prediction under diffusers' own hook
for this (`LayerSkipConfig(skip_attention_scores=True)`: scaled dot-product attention returns its values, which
is `PAGIdentitySelfAttnProcessor2_0`'s perturbed path) on the self-attention layers that
`PAGMixin._set_pag_attn_processor` picks for the same layer names.

`pag_layers` holds one flag per UNet part (down, mid, up): 1 perturbs every self-attention layer whose name
contains that part, as diffusers' `pag_applied_layers=["mid"]` does (the default: (0, 1, 0)).
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

import torch
from diffusers.hooks import HookRegistry, LayerSkipConfig
from diffusers.hooks.layer_skip import _apply_layer_skip_hook

from ...denoiser import VARIANT_LIMITS, VARIANTS
from ..base import Mode, Param, Params
from ._perturbed import attention_layers, combine_for, needs_for, no_attention

ORDER = 160
PARTS = ("down", "mid", "up")  # pag_layers' entries, in order: the names diffusers' pag_applied_layers matches
HOOK = "cfg_explorer_pag"


def layers(params: Params) -> tuple[str, ...]:
    """The layer names `pag_layers` turns on, as diffusers' `pag_applied_layers`: ("mid",) by default."""
    return tuple(part for part, flag in zip(PARTS, params.pag_layers) if flag)


def variant(params: Params) -> str:
    return "pag:" + ",".join(layers(params))


def stacks(unet: torch.nn.Module, names: tuple[str, ...]) -> dict[str, list[int]]:
    """The transformer-block stacks (fully qualified names) and block indices whose self-attention a PAG layer
    name selects: every `attn1` whose name the layer name matches (`re.search`, as `PAGMixin` does)."""
    found: dict[str, list[int]] = {}
    for name, _ in attention_layers(unet):
        if any(re.search(layer, name) for layer in names):
            stack, index = re.match(r"(.*\.transformer_blocks)\.(\d+)\.", name).groups()
            found.setdefault(stack, []).append(int(index))
    return found


@contextlib.contextmanager
def perturbed(unet: torch.nn.Module, arg: str = "mid") -> Iterator[None]:
    """The UNet with identity self-attention on the layers `arg` names ("mid", "down,up"; bare "pag": "mid")."""
    names = tuple(arg.split(","))
    found = stacks(unet, names)
    if not found:
        raise ValueError(f"pag_layers: no self-attention layer of this UNet matches {list(names)}")
    registry = HookRegistry.check_if_exists_or_initialize(unet)
    try:
        for stack, indices in found.items():
            _apply_layer_skip_hook(unet, LayerSkipConfig(indices, fqn=stack, skip_attention=False,
                                                         skip_attention_scores=True, skip_ff=False), name=HOOK)
        yield
    finally:
        registry.remove_hook(HOOK, recurse=True)


VARIANTS["pag"] = perturbed
VARIANT_LIMITS["pag"] = no_attention


def check(params: Params) -> tuple[str, str] | None:
    if any(flag not in (0.0, 1.0) for flag in params.pag_layers):
        return "pag_layers", f"each entry is 0 or 1 (down, mid, up), got {list(params.pag_layers)}"
    if params.pag_scale and not layers(params):
        return "pag_layers", "turn on at least one of down, mid, up (or set the PAG scale to 0)"
    return None


MODE = Mode(
    "pag", "PAG (perturbed attention)",
    r"$$\hat\epsilon = \epsilon_u + s\,(\epsilon_c - \epsilon_u) + s_p\,(\epsilon_c - \tilde\epsilon_c)$$ "
    r"Ahn et al. (2024): $\tilde\epsilon_c$ is the prompt's prediction with the chosen blocks' self-attention "
    r"replaced by the identity, which keeps content and breaks structure; stepping away from it sharpens "
    r"structure. It **adds to** CFG ($s = 1$: PAG alone, no negative prompt needed). **A third UNet pass per "
    r"step** (two at $s = 1$).",
    needs_for(variant, "pag_scale"), combine_for("pag_scale"),
    params=(
        Param("pag_scale", "PAG scale", 3.0, (0.0, 20.0), 0.5,
              "s_p: how hard to step away from the perturbed prediction (diffusers' SDXL PAG pipeline: 3). "
              "0: plain CFG. Costs a third UNet pass per step."),
        Param("pag_layers", "PAG layers (down, mid, up)", (0.0, 1.0, 0.0), (0.0, 1.0), 1.0,
              "1 perturbs every self-attention layer of that UNet part (diffusers' pag_applied_layers; "
              "default: mid only).", length=3),
    ),
    check=check,
)
