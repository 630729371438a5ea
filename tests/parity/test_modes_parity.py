"""Parity of the modes added in issue 20 with their `diffusers.guiders` guiders: step by step on the same
predictions, over whole runs of a hand loop around the guider, and over runs of diffusers' own modular SDXL
pipeline with the guider as its component (the helpers and tolerances of test_lab_parity).

    ours           diffusers
    tcfg           TangentialClassifierFreeGuidance(guidance_scale=s)
    magnitude_aware MagnitudeAwareGuidance(guidance_scale=s, alpha=mag_alpha)
    apg_mix        AdaptiveProjectedMixGuidance(guidance_scale=s, adaptive_projected_guidance_scale=s, ...)
    fdg            FrequencyDecoupledGuidance(guidance_scales=fdg_scales) (needs kornia, as diffusers' guider does)
"""

from __future__ import annotations

import pytest
import torch
from diffusers.guiders import (
    AdaptiveProjectedMixGuidance,
    FrequencyDecoupledGuidance,
    MagnitudeAwareGuidance,
    TangentialClassifierFreeGuidance,
)

from pipeline import GenerationRequest
from pipeline.guidance.modes.apg import apg
from pipeline.guidance.modes.apg_mix import apg_mix
from pipeline.guidance.modes.magnitude_aware import magnitude_aware
from pipeline.guidance.modes.tcfg import tcfg
from pipeline.loop import COND, UNCOND, _combine, _lane, _plan
from pipeline.request import RequestError
from tests.parity.test_lab_parity import (
    EXACT_TOL, assert_matches_modular_pipeline, final_latents, guider_loop, modular_pipe, random_pairs, request,
    step_guider,
)

__all__ = ["modular_pipe"]  # the fixture, shared with test_lab_parity

_torch_norm = torch.norm


def _frobenius_over_dims(input, p="fro", dim=None, keepdim=False, dtype=None):
    """torch.norm as documented: 'fro' over any dims is the 2-norm of those entries. torch 2.13 raises for
    three dims, which diffusers 0.42.1's `mambo_guidance` asks for (`torch.norm(x, dim=[1, 2, 3])`)."""
    if p == "fro" and isinstance(dim, (list, tuple)) and len(dim) > 2:
        return torch.linalg.vector_norm(input, 2, dim=dim, keepdim=keepdim, dtype=dtype)
    return _torch_norm(input, p, dim, keepdim, dtype=dtype)


@pytest.fixture(autouse=True)
def diffusers_mambo_runs(monkeypatch):
    """Run diffusers' own MAMBO-G with only its norm call fixed (see `_frobenius_over_dims`)."""
    monkeypatch.setattr(torch, "norm", _frobenius_over_dims)


def test_diffusers_mambo_needs_the_norm_fix(monkeypatch):
    """If this fails, diffusers or torch fixed the call: drop the fixture, and let
    pipeline.magnitude_aware call diffusers' `mambo_guidance`."""
    from diffusers.guiders.magnitude_aware_guidance import mambo_guidance

    monkeypatch.setattr(torch, "norm", _torch_norm)
    cond, uncond = random_pairs(1)[0]
    with pytest.raises(RuntimeError, match="dim must be a 2-tuple"):
        mambo_guidance(cond, uncond, 5.0)


def tcfg_guider(req: GenerationRequest) -> TangentialClassifierFreeGuidance:
    return TangentialClassifierFreeGuidance(
        guidance_scale=req.guidance_scale, start=req.guidance_interval[0], stop=req.guidance_interval[1])


def mambo_guider(req: GenerationRequest) -> MagnitudeAwareGuidance:
    return MagnitudeAwareGuidance(guidance_scale=req.guidance_scale, alpha=req.mag_alpha,
                                  start=req.guidance_interval[0], stop=req.guidance_interval[1])


def apg_mix_guider(req: GenerationRequest) -> AdaptiveProjectedMixGuidance:
    return AdaptiveProjectedMixGuidance(
        guidance_scale=req.guidance_scale, adaptive_projected_guidance_scale=req.guidance_scale,
        adaptive_projected_guidance_momentum=req.apg_mix_momentum,
        adaptive_projected_guidance_rescale=req.apg_mix_norm_threshold, eta=req.apg_mix_eta,
        adaptive_projected_guidance_start_step=req.apg_mix_start_step, start=req.guidance_interval[0],
        stop=req.guidance_interval[1])


def fdg_guider(req: GenerationRequest) -> FrequencyDecoupledGuidance:
    pytest.importorskip("kornia", reason="diffusers' FDG guider builds its pyramid with kornia")
    return FrequencyDecoupledGuidance(guidance_scales=list(req.fdg_scales), start=req.guidance_interval[0],
                                      stop=req.guidance_interval[1])


def apg_mix_request(**changes) -> GenerationRequest:
    # a cap of 2: below the tiny UNet's and random_pairs' update norms, so APG differs from CFG
    return request(**{"mode": "apg_mix", "apg_mix_start_step": 1, "apg_mix_norm_threshold": 2.0, **changes})


CASES = [
    pytest.param(request(mode="tcfg"), tcfg_guider, id="tcfg"),
    pytest.param(request(mode="tcfg", guidance_interval=(0.2, 0.7)), tcfg_guider, id="tcfg-interval"),
    pytest.param(request(mode="magnitude_aware"), mambo_guider, id="mambo-default-alpha"),
    # alpha 0.05: the damping exp(-alpha r) is between 0.2 and 1 for the tiny UNet's r ~ 1..30, so it matters
    pytest.param(request(mode="magnitude_aware", mag_alpha=0.05, guidance_interval=(0.0, 0.6)), mambo_guider,
                 id="mambo-alpha0.05-interval"),
    pytest.param(apg_mix_request(), apg_mix_guider, id="apg_mix"),
    pytest.param(apg_mix_request(apg_mix_start_step=3, apg_mix_eta=0.5, apg_mix_momentum=0.3,
                                 guidance_interval=(0.0, 0.75)), apg_mix_guider, id="apg_mix-stop"),
    pytest.param(apg_mix_request(apg_mix_momentum=0.0), apg_mix_guider, id="apg_mix-no-momentum"),
    # refused before modes were told the step index: its own count then fell behind the guider's step
    pytest.param(apg_mix_request(apg_mix_start_step=3, guidance_interval=(0.25, 1.0)), apg_mix_guider,
                 id="apg_mix-delayed-interval"),
    pytest.param(request(mode="fdg"), fdg_guider, id="fdg-default-scales"),
    pytest.param(request(mode="fdg", fdg_scales=(7.5, 2.0), guidance_interval=(0.2, 0.7)), fdg_guider,
                 id="fdg-interval"),
    pytest.param(request(mode="fdg", fdg_scales=(1.0, 1.0)), fdg_guider, id="fdg-all-ones-is-cond"),
]


def test_mag_alpha_defaults_to_diffusers_alpha():
    assert GenerationRequest(prompt="x").mag_alpha == MagnitudeAwareGuidance().alpha == 8.0


@pytest.mark.parametrize("req, make_guider", CASES)
def test_loop_step_logic_matches_diffusers_guider(tiny_pipe, req, make_guider):
    """Our per-step plan and combination against the guider on the same predictions: exact (the same
    diffusers function on the same tensors; measured max difference 0.0)."""
    total = 8
    guider = make_guider(req)
    lane = _lane(tiny_pipe, req, slice(0, 2))  # a fresh per-run state, as the loop makes it
    for i, (cond, uncond) in enumerate(random_pairs(total, seed=1)):
        step_guider(guider, i, total)
        parts, scale, _ = _plan(req, i, total)
        assert len(parts) == guider.num_conditions, f"step {i}"
        preds = {part: {COND: cond, UNCOND: uncond}[part] for part in parts}
        torch.testing.assert_close(_combine(lane, preds, scale, like=cond, step=i), guider.forward(cond, uncond).pred,
                                   atol=0, rtol=0)


@pytest.mark.parametrize("formula", [tcfg, lambda c, u, s: magnitude_aware(c, u, s, 0.05)])
def test_new_formulas_are_not_cfg_and_scale_one_is_cond(formula):
    cond, uncond = random_pairs(1, seed=4)[0]
    cfg = uncond + 5.0 * (cond - uncond)
    assert (formula(cond, uncond, 5.0) - cfg).abs().max() > 0.1  # each changes CFG on these predictions
    if formula is tcfg:
        # TCFG filters eps_u even at s = 1; the loop never combines there (one UNet pass: eps_c itself)
        assert _plan(request(mode="tcfg", guidance_scale=1.0), 0, 5).parts == (COND,)
    else:
        torch.testing.assert_close(formula(cond, uncond, 1.0), cond)


def test_tcfg_with_equal_predictions_is_the_prediction():
    """[eps; eps] has rank 1: its first singular vector is eps's direction, so nothing is filtered."""
    cond = random_pairs(1, seed=5)[0][0]
    # float32 SVD: measured max difference 1.6e-5 on values up to ~4
    torch.testing.assert_close(tcfg(cond, cond.clone(), 7.0), cond, atol=1e-4, rtol=0)


def test_magnitude_aware_scale_falls_with_the_update():
    """The effective scale is 1 + (s - 1) exp(-alpha r) per image, r = ||eps_c - eps_u|| / ||eps_u||."""
    cond, uncond = random_pairs(1, seed=6)[0]
    out = magnitude_aware(cond, uncond, 5.0, alpha=0.5)
    r = (cond - uncond).flatten(1).norm(dim=1) / uncond.flatten(1).norm(dim=1)
    s_t = 1 + 4.0 * torch.exp(-0.5 * r)
    torch.testing.assert_close(out, uncond + s_t.view(-1, 1, 1, 1) * (cond - uncond), atol=1e-5, rtol=1e-5)


RUN_CASES = [
    pytest.param(request(mode="tcfg"), tcfg_guider, "euler", id="tcfg-euler"),
    pytest.param(request(mode="tcfg", guidance_interval=(0.2, 1.0)), tcfg_guider, "dpmpp_2m", id="tcfg-dpmpp_2m"),
    pytest.param(request(mode="magnitude_aware", mag_alpha=0.05), mambo_guider, "euler", id="mambo-euler"),
    pytest.param(request(mode="magnitude_aware", mag_alpha=0.05), mambo_guider, "euler_a", id="mambo-euler_a"),
    pytest.param(apg_mix_request(), apg_mix_guider, "euler", id="apg_mix-euler"),
    pytest.param(apg_mix_request(apg_mix_start_step=2), apg_mix_guider, "dpmpp_2m", id="apg_mix-dpmpp_2m"),
    pytest.param(apg_mix_request(apg_mix_start_step=3, guidance_interval=(0.2, 1.0)), apg_mix_guider, "euler",
                 id="apg_mix-delayed-interval-euler"),
    pytest.param(request(mode="fdg"), fdg_guider, "euler", id="fdg-euler"),
    pytest.param(request(mode="fdg", fdg_scales=(7.5, 2.0), guidance_interval=(0.2, 1.0)), fdg_guider, "dpmpp_2m",
                 id="fdg-dpmpp_2m"),
]


@pytest.mark.parametrize("req, make_guider, scheduler", RUN_CASES)
def test_run_matches_a_loop_around_the_diffusers_guider(tiny_pipe, req, make_guider, scheduler):
    req = GenerationRequest.from_dict({**req.to_dict(), "scheduler": scheduler})
    expected = guider_loop(tiny_pipe, make_guider(req), req)
    torch.testing.assert_close(final_latents(tiny_pipe, req), expected, **EXACT_TOL)


@pytest.mark.parametrize("req, make_guider, scheduler", RUN_CASES)
def test_run_matches_diffusers_modular_pipeline_with_the_guider(tiny_pipe, modular_pipe, req, make_guider, scheduler):
    assert_matches_modular_pipeline(tiny_pipe, modular_pipe, req, make_guider, scheduler)


def test_apg_mix_is_cfg_up_to_its_start_step_then_apg():
    cond, uncond = random_pairs(1, seed=7)[0]
    cfg = uncond + 5.0 * (cond - uncond)
    for step in (0, 2):
        torch.testing.assert_close(apg_mix(cond, uncond, 5.0, step, 2, None), cfg)
    projected = apg(cond, uncond, 5.0, None, eta=0.0, norm_threshold=10.0)
    torch.testing.assert_close(apg_mix(cond, uncond, 5.0, 3, 2, None), projected)
    assert (projected - cfg).abs().max() > 0.1


def test_apg_mix_switches_at_its_start_step_whatever_steps_were_skipped(tiny_pipe):
    """Told the step index, APG mix takes APG from step start + 1 even where the interval skipped the first steps
    (a delayed start and a schedule were refused while it counted its own steps)."""
    req = apg_mix_request(apg_mix_start_step=3, guidance_interval=(0.25, 1.0), guidance_schedule="linear")
    lane = _lane(tiny_pipe, req, slice(0, 2))
    cond, uncond = random_pairs(1, seed=7)[0]
    preds = {COND: cond, UNCOND: uncond}
    torch.testing.assert_close(_combine(lane, preds, 5.0, like=cond, step=3), uncond + 5.0 * (cond - uncond))
    apg_step = _combine(lane, preds, 5.0, like=cond, step=4)
    assert (apg_step - (uncond + 5.0 * (cond - uncond))).abs().max() > 0.1


@pytest.mark.parametrize("changes, field", [
    ({"guidance_schedule": "linear"}, "guidance_schedule"),  # FDG's scales replace s: a schedule of s is not read
    ({"guidance_rescale": 0.7}, "guidance_rescale"),  # diffusers' FDG rescales per level, which this does not
])
def test_fdg_refuses_settings_it_would_ignore(changes, field):
    with pytest.raises(RequestError) as error:
        request(mode="fdg", **changes)
    assert error.value.field == field
    request(mode="cfg", **changes)  # fine for CFG
