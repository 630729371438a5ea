"""FDG's pyramid and formula (pipeline.guidance.modes.fdg.py) against kornia's pyramid and diffusers'
`FrequencyDecoupledGuidance`, which needs kornia: these tests run where kornia is installed
(requirements-test.txt), and say so when skipped."""

from __future__ import annotations

import pytest
import torch

from pipeline.guidance.modes.fdg import DEFAULT_SCALES, fdg, image_from_pyramid, laplacian_pyramid, pyrup

kornia = pytest.importorskip("kornia", reason="FDG's parity needs kornia, as diffusers' FDG guider does")
from diffusers.guiders import FrequencyDecoupledGuidance  # noqa: E402
from kornia.geometry import pyrup as kornia_pyrup  # noqa: E402
from kornia.geometry.transform import build_laplacian_pyramid  # noqa: E402

# The same conv2d and interpolate calls on the same values: measured max difference 0.0 on every shape below.
# The tolerance leaves room for another summation order in a later torch.
TOL = dict(atol=1e-6, rtol=1e-6)
SHAPES = [(2, 4, 128, 128), (2, 4, 8, 12), (1, 4, 96, 64)]  # SDXL at 1024 px; test_lab_parity's 64x96 px; portrait


def preds(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_pyramid_matches_kornia(shape, levels):
    x = preds(shape)[0]
    ours, theirs = laplacian_pyramid(x, levels), build_laplacian_pyramid(x, levels)
    assert [p.shape for p in ours] == [p.shape for p in theirs]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(pyrup(ours[-1]), kornia_pyrup(theirs[-1]), **TOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_pyramid_inverts_exactly(shape):
    x = preds(shape)[0]
    torch.testing.assert_close(image_from_pyramid(laplacian_pyramid(x, 3)), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
# Not a level at scale exactly 1: diffusers 0.42.1 then appends `pred_cond_freq` left over from the previous
# level (a tensor of the wrong size; the intended value, eps_c's level, is what `fdg` gives, u + 1 (c - u)).
@pytest.mark.parametrize("scales", [DEFAULT_SCALES, (7.5, 2.0, 1.5)])
def test_fdg_matches_diffusers_guider(shape, scales):
    cond, uncond = preds(shape, seed=1)
    guider = FrequencyDecoupledGuidance(guidance_scales=list(scales))
    guider.set_state(step=0, num_inference_steps=10, timestep=torch.tensor(999))
    torch.testing.assert_close(fdg(cond, uncond, scales), guider.forward(cond, uncond).pred, **TOL)


def test_equal_scales_are_cfg():
    """The pyramid is linear and inverts exactly, so one scale on every level is CFG at that scale."""
    cond, uncond = preds((2, 4, 32, 32), seed=2)
    torch.testing.assert_close(fdg(cond, uncond, (4.0, 4.0)), uncond + 4.0 * (cond - uncond), atol=1e-5, rtol=0)
    assert (fdg(cond, uncond, DEFAULT_SCALES) - (uncond + 10.0 * (cond - uncond))).abs().max() > 0.5
