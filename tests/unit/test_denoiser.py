"""The one seam for the model (pipeline/denoiser.py), and the step-rule hook of a mode."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from pipeline import GenerationRequest, denoise
from pipeline.denoiser import Conditioning, Denoiser
from pipeline.guidance import GUIDANCE_MODES
from pipeline.inversion import invert
from pipeline.loop import make_generators  # noqa: F401 (the loop is importable beside the denoiser)
from pipeline.memory import CHUNK_ENV
from pipeline.schedulers import make_scheduler, step_sigmas
from tests.unit.test_guidance import UNetCallCounter

# Exact where both run the same rows in the same calls; a chunked call reorders nothing, but the UNet's matmuls
# over 1 row and over 2 rows may round differently in float32.
CHUNKED_TOL = dict(atol=1e-5, rtol=1e-5)


def test_inversion_goes_through_the_denoisers_micro_batching(tiny_pipe, monkeypatch):
    """Inversion called the UNet itself, skipping micro-batching: with a forced chunk of 1 row its guided
    [zeros, prompt] batch now runs as two calls per step, and gives the same noise as in one call."""
    image = Image.new("RGB", (64, 64), (200, 80, 40))
    whole = invert(tiny_pipe, image, "a fox", steps=3, guidance_scale=5.0, width=64, height=64)
    monkeypatch.setenv(CHUNK_ENV, "1")
    with UNetCallCounter(tiny_pipe.unet) as calls:
        chunked = invert(tiny_pipe, image, "a fox", steps=3, guidance_scale=5.0, width=64, height=64)
    assert calls.batches == [1] * 6  # 3 steps x 2 passes, one row per call
    torch.testing.assert_close(chunked.noise, whole.noise, **CHUNKED_TOL)


def test_denoiser_refuses_a_variant_it_does_not_know(tiny_pipe):
    """A pass asking for a model variant no mode registered is refused, never run on the plain UNet instead."""
    denoiser = Denoiser(tiny_pipe)
    conditioning = Conditioning(torch.zeros(1, 77, 64), torch.zeros(1, 32), torch.zeros(1, 6))
    with pytest.raises(ValueError, match="variant: the denoiser knows"):
        denoiser(torch.zeros(1, 4, 8, 8), torch.tensor(999), conditioning, "sharpened")


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_step_rule_sees_the_steps_sigmas_and_sets_what_the_scheduler_steps_with(tiny_pipe, monkeypatch, scheduler):
    """A mode's step rule gets each step's sigma and sigma_next (sqrt((1 - abar) / abar)); what it returns is what
    the scheduler steps with. Here it returns the guided prediction unchanged, so the run equals plain CFG."""
    seen = []

    def rule(guided, preds, params, step):
        seen.append(step)
        return guided

    request = GenerationRequest(prompt="a fox", steps=3, width=64, height=64, scheduler=scheduler)
    plain = [e.latents for e in denoise(tiny_pipe, request)]
    monkeypatch.setitem(GUIDANCE_MODES, "cfg", dataclasses.replace(GUIDANCE_MODES["cfg"], step_rule=rule))
    ruled = [e.latents for e in denoise(tiny_pipe, request)]
    for a, b in zip(plain, ruled):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    reference = make_scheduler(tiny_pipe, scheduler)
    reference.set_timesteps(3)
    alphas = reference.alphas_cumprod
    expected = []
    for k, t in enumerate(reference.timesteps):
        a = float(alphas[int(t)])
        nxt = reference.timesteps[k + 1] if k + 1 < 3 else None
        a_next = float(alphas[int(nxt)]) if nxt is not None else float(getattr(reference, "final_alpha_cumprod", 1.0))
        expected.append((((1 - a) / a) ** 0.5, ((1 - a_next) / a_next) ** 0.5))
    assert [s.scheduler for s in seen] == [scheduler] * 3
    got = [(s.sigma, s.sigma_next) for s in seen]
    # Euler's sigmas are interpolated in float32 from the same alphas_cumprod: equal to 1e-4 relative
    assert [x for pair in got for x in pair] == pytest.approx([x for pair in expected for x in pair], rel=1e-4, abs=1e-6)


def test_step_sigmas_before_the_first_step_of_dpm(tiny_pipe):
    """DPM-Solver++ sets its step index only in step(): step_sigmas sets it as step() would."""
    scheduler = make_scheduler(tiny_pipe, "dpmpp_2m")
    scheduler.set_timesteps(4)
    sigma, sigma_next = step_sigmas(scheduler, scheduler.timesteps[0])
    assert (sigma, sigma_next) == (float(scheduler.sigmas[0]), float(scheduler.sigmas[1]))


@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_one_timestep_per_row_follows_its_rows_through_micro_batches(toy_pipe, chunk):
    """Rows of runs at different steps share a UNet call (Ray Serve's same-shape batching) with one timestep per
    row, (B,): each row's prediction equals its own call at its own timestep, however the batch is chunked."""
    torch.manual_seed(0)
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([900.0, 500.0, 20.0])
    cond = Conditioning(torch.randn(3, 77, 32), torch.randn(3, 8), torch.randn(3, 6))
    together = Denoiser(toy_pipe, chunk)(x, t, cond)
    for row in range(3):
        alone = Denoiser(toy_pipe)(x[row:row + 1], t[row], cond.rows(slice(row, row + 1)))
        assert together[row:row + 1].equal(alone)  # max difference 0.0: the toy's UNet is row-wise float64


def test_a_real_unet_takes_one_timestep_per_row(tiny_pipe):
    """diffusers' UNet2DConditionModel takes a (B,) timestep as it is: rows at different timesteps in one call equal
    their own calls within CHUNKED_TOL (float32 matmuls over 1 row and over 3 may round differently)."""
    torch.manual_seed(0)
    width = tiny_pipe.unet.config.cross_attention_dim
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([900, 500, 20])
    cond = Conditioning(torch.randn(3, 77, width), torch.randn(3, tiny_pipe.text_encoder_2.config.projection_dim),
                        torch.tensor([[64.0, 64, 0, 0, 64, 64]]).repeat(3, 1))
    together = Denoiser(tiny_pipe)(x, t, cond)
    for row in range(3):
        alone = Denoiser(tiny_pipe)(x[row:row + 1], t[row], cond.rows(slice(row, row + 1)))
        torch.testing.assert_close(together[row:row + 1], alone, **CHUNKED_TOL)


@pytest.mark.parametrize("variant", ["pag", "pag:mid", "pag:down,up", "seg", "seg:1.5", "autoguidance"])
def test_a_variant_pass_changes_the_prediction_and_leaves_the_unet_as_it_was(tiny_pipe, variant):
    """Each perturbed-model variant (issue 22) changes what the UNet predicts, and only inside its pass: the plain
    call after it is bit-identical to the one before (diffusers' hooks are taken off again)."""
    denoiser = Denoiser(tiny_pipe)
    g = torch.Generator().manual_seed(0)
    conditioning = Conditioning(torch.randn(2, 77, 64, generator=g), torch.randn(2, 32, generator=g),
                                torch.tensor([[96.0, 64.0, 0.0, 0.0, 96.0, 64.0]] * 2))
    sample, t = torch.randn(2, 4, 12, 8, generator=g), torch.tensor(500)
    before = denoiser(sample, t, conditioning)
    perturbed = denoiser(sample, t, conditioning, variant)
    after = denoiser(sample, t, conditioning)
    assert (perturbed - before).abs().max() > 1e-3
    torch.testing.assert_close(after, before, atol=0, rtol=0)


@pytest.mark.parametrize("variant", ["pag", "seg"])
def test_attention_variants_are_refused_on_the_toy_with_the_reason(toy_pipe, variant):
    from pipeline.denoiser import variant_problem

    assert "no attention layers" in variant_problem(toy_pipe.unet, variant)
    assert variant_problem(toy_pipe.unet, "autoguidance") is None


def test_a_variant_pass_is_its_own_call_and_goes_through_micro_batching(tiny_pipe, monkeypatch):
    """PAG (issue 22): per step one call for [eps_u; eps_c] and one for the perturbed eps_c, each cut into
    one-row calls under a forced chunk of 1, with the same latents (within float32 rounding) as whole calls."""
    req = GenerationRequest(prompt="an otter", mode="pag", steps=3, seeds=(1, 2), width=64, height=64)
    with UNetCallCounter(tiny_pipe.unet) as calls:
        whole = list(denoise(tiny_pipe, req))[-1].latents
    assert calls.batches == [4, 2] * 3
    monkeypatch.setenv(CHUNK_ENV, "1")
    with UNetCallCounter(tiny_pipe.unet) as calls:
        chunked = list(denoise(tiny_pipe, req))[-1].latents
    assert calls.batches == [1] * 6 * 3
    # measured max difference 3.0e-5: one-row matmuls round differently, and s = 7.5 plus s_p = 3 amplify it
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=1e-5)


class _CountingDenoiser:
    """A given denoiser as a Ray Serve replica passes one: the Denoiser's call, `device` and `chunks`, and no
    `watchers` attribute (the loop must not ask it for one)."""

    def __init__(self, pipe) -> None:
        self.inner = Denoiser(pipe)
        self.device, self.chunks, self.calls = self.inner.device, 0, 0

    def __call__(self, model_input, t, conditioning, variant="", layout=None):
        self.calls += 1
        noise = self.inner(model_input, t, conditioning, variant)
        self.chunks = self.inner.chunks
        return noise


def test_a_given_denoiser_makes_every_unet_call_and_gives_the_same_latents(toy_pipe):
    req = GenerationRequest(prompt="red circle", steps=4, seeds=(1, 2), width=64, height=64)
    plain = list(denoise(toy_pipe, req))[-1].latents
    given = _CountingDenoiser(toy_pipe)
    through = list(denoise(toy_pipe, req, denoiser=given))[-1].latents
    assert given.calls == 4
    torch.testing.assert_close(through, plain, atol=0, rtol=0)


def test_watchers_and_a_given_denoiser_are_refused_together(toy_pipe):
    req = GenerationRequest(prompt="red circle", steps=2, seeds=(1,), width=64, height=64)
    with pytest.raises(ValueError, match="watchers"):
        list(denoise(toy_pipe, req, denoiser=_CountingDenoiser(toy_pipe), watchers=[object()]))
