"""FDG: Frequency-Decoupled Guidance, Sadat et al. (2025, arXiv 2506.19713, Algorithm 2) ↔ diffusers
`FrequencyDecoupledGuidance(guidance_scales=...)`, here without kornia.

Its parameter `fdg_scales` is one scale per pyramid level (a tuple `Param`, `length=2`), and takes the place of
the guidance scale, as diffusers' guider has no other: s, a schedule and guidance rescale (which the guider
applies per level) are refused rather than ignored. The guidance interval applies, as the guider's start/stop.

diffusers builds the Laplacian pyramid with kornia (`build_laplacian_pyramid`, `pyrup`), which is not a
requirement here; the pyramid is small, so it is written below with kornia's numerics: a 5x5 binomial blur
([1, 4, 6, 4, 1] / 16 in each direction) over reflect padding, bilinear resizing (align_corners False), and
kornia's padding to the next power of two where a side would not halve evenly. tests/parity/test_fdg_parity.py
checks it against kornia and the whole formula against diffusers' guider, where kornia is installed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import COND, UNCOND, Mode, Param, Params, Part, Predictions

ORDER = 150
DEFAULT_SCALES = (10.0, 5.0)  # diffusers' defaults: the highest-frequency level first


def _blur(x: Tensor) -> Tensor:
    """kornia's `filter2d` with its pyramid kernel: depthwise 5x5 binomial over reflect padding."""
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (torch.outer(taps, taps) / 256.0).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])


def pyrdown(x: Tensor) -> Tensor:
    """Blur, then halve each side (floor), as kornia's `pyrdown`."""
    return F.interpolate(_blur(x), size=(x.shape[-2] // 2, x.shape[-1] // 2), mode="bilinear", align_corners=False)


def pyrup(x: Tensor) -> Tensor:
    """Double each side, then blur, as kornia's `pyrup`."""
    return _blur(F.interpolate(x, size=(x.shape[-2] * 2, x.shape[-1] * 2), mode="bilinear", align_corners=False))


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """Burt & Adelson's Laplacian pyramid, highest frequency first; the last entry is the coarsest Gaussian
    level. Padded (reflect) to the next power of two per side exactly where kornia's `build_laplacian_pyramid`
    pads; `fdg` crops its result back."""
    h, w = x.shape[-2:]
    stride = 1 << (levels - 1)
    if not (_power_of_two(w) or _power_of_two(h)) or (levels > 1 and (h % stride or w % stride)):
        x = F.pad(x, (0, (1 << (w - 1).bit_length()) - w, 0, (1 << (h - 1).bit_length()) - h), mode="reflect")
    gaussian = [x]
    for _ in range(levels - 1):
        gaussian.append(pyrdown(gaussian[-1]))
    return [fine - pyrup(coarse) for fine, coarse in zip(gaussian, gaussian[1:])] + [gaussian[-1]]


def image_from_pyramid(pyramid: list[Tensor]) -> Tensor:
    """The inverse: from the coarsest level, upsample and add each finer level (Algorithm 2 of the paper)."""
    image = pyramid[-1]
    for level in reversed(pyramid[:-1]):
        image = pyrup(image) + level
    return image


def fdg(noise_pred_cond: Tensor, noise_pred_uncond: Tensor, scales: tuple[float, ...]) -> Tensor:
    """Frequency-decoupled guidance (Sadat et al. 2025, arXiv 2506.19713): CFG on each level of the two
    predictions' Laplacian pyramids with that level's scale, highest frequency first, then the pyramid
    inverted. The paper's SDXL setting: 10 on the fine details, 5 on the coarse layout and colour."""
    cond, uncond = laplacian_pyramid(noise_pred_cond, len(scales)), laplacian_pyramid(noise_pred_uncond, len(scales))
    guided = [u + s * (c - u) for c, u, s in zip(cond, uncond, scales)]
    h, w = noise_pred_cond.shape[-2:]
    return image_from_pyramid(guided)[..., :h, :w]


def needs(scale: float, params: Params) -> tuple[Part, ...]:
    """Both predictions, whatever s (FDG does not read it); one scale of 1 on every level is the prompt's
    prediction alone, as diffusers' guider then runs only the conditional pass."""
    return (COND,) if all(s == 1.0 for s in params.fdg_scales) else (UNCOND, COND)


def combine(preds: Predictions, scale: float, params: Params, state: Any) -> Tensor:
    return fdg(preds[COND], preds[UNCOND], params.fdg_scales)


def check(params: Params) -> tuple[str, str] | None:
    # FDG's scales are its own per level; the settings made for s would be silently ignored.
    if params.guidance_schedule != "constant":
        return "guidance_schedule", "must be constant in mode 'fdg' (its scales per level replace the guidance scale)"
    if params.guidance_rescale != 0.0:
        return "guidance_rescale", "must be 0 in mode 'fdg' (diffusers' FDG rescales per level, which this does not)"
    return None


MODE = Mode(
    "fdg", "FDG (frequency-decoupled)",
    r"$$\hat\epsilon = \mathcal{L}^{-1}\big(\{\, u_k + s_k\,(c_k - u_k) \,\}_k\big)$$ Frequency-decoupled "
    r"guidance (Sadat et al. 2025, arXiv 2506.19713): CFG on each level k of the Laplacian pyramids "
    r"$c = \mathcal{L}(\epsilon_c)$, $u = \mathcal{L}(\epsilon_u)$ with its own scale, the fine details first. "
    r"A strong scale on the details and a mild one on the layout and colour sharpens without oversaturating. "
    r"Its scales replace the guidance scale.",
    needs, combine,
    params=(Param("fdg_scales", "FDG scales (fine, coarse)", DEFAULT_SCALES, (0.0, 30.0), 0.5,
                  "One guidance scale per pyramid level, the fine details first, as \"10, 5\".", length=2),),
    check=check, unused=(("guidance_scale", "its scales per level (FDG scales) replace it"),),
)
