"""CFG++ (Chung et al. 2024, arXiv 2406.08070): x0 from eps_u + l (eps_c - eps_u), renoised with eps_u.

diffusers ships no CFG++ guider, so the oracle is CFG++ written from its definition, step by step: the identity
with CFG at w_t = l sigma_t / (sigma_t - sigma_next) on each scheduler's own sigmas, and whole runs of our mode
against a hand loop that takes x0 and renoises it by the paper's two formulas.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from pipeline import GenerationRequest, generate
from pipeline.guidance.modes.cfg_pp import cfg_pp_step_prediction, equivalent_scale, equivalent_scales
from pipeline.request import RequestError
from pipeline.schedulers import SCHEDULER_CLASSES, run_sigmas, step_sigmas

PROMPT = "an otter"
SEEDS = (3, 8)
STEPS = 6


def scheduler_of(pipe, name: str, steps: int = STEPS):
    scheduler = SCHEDULER_CLASSES[name].from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    if hasattr(scheduler, "set_begin_index"):  # DDIM has none: it keeps no step index
        scheduler.set_begin_index(0)
    return scheduler


@pytest.mark.parametrize("name", ["euler", "ddim"])
def test_cfg_pp_is_cfg_at_the_equivalent_scale_on_every_step(tiny_pipe, name):
    """In float64: CFG++ by its definition (x0 from eps_l, renoised with eps_u) against one CFG step at
    w_t = l sigma_t / (sigma_t - sigma_next), on the scheduler's own sigmas. Agreement to 1e-12."""
    scheduler = scheduler_of(tiny_pipe, name, 30)
    g = torch.Generator().manual_seed(0)
    lam = 0.6
    for t in scheduler.timesteps:
        x, eps_u, eps_c = (torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
        scheduler.scale_model_input(x.float(), t)
        sigma, sigma_next = step_sigmas(scheduler, t)
        eps_l = eps_u + lam * (eps_c - eps_u)
        x0 = x - sigma * eps_l  # VE units: x / sqrt(abar)
        cfg_pp = x0 + sigma_next * eps_u
        w = equivalent_scale(lam, sigma, sigma_next)
        cfg_step = x + (sigma_next - sigma) * (eps_u + w * (eps_c - eps_u))
        torch.testing.assert_close(cfg_step, cfg_pp, atol=1e-12, rtol=0)
        torch.testing.assert_close(cfg_pp_step_prediction(eps_l, eps_u, sigma, sigma_next),
                                   eps_u + w * (eps_c - eps_u), atol=1e-12, rtol=0)
        if name == "euler":  # as its step() would move on
            scheduler._step_index += 1


@pytest.mark.parametrize("name", ["euler", "ddim"])
def test_the_equivalent_scale_grows_with_the_number_of_steps(tiny_pipe, name):
    """Smaller steps, larger w_t: why the same l guides harder with more steps. Euler's last step lands on
    sigma 0, where w_t = l (DDIM's lands on SDXL's final alpha_bar = alpha_bar[0], sigma 0.03, not 0)."""
    def scales(steps):
        return equivalent_scales(0.5, run_sigmas(SCHEDULER_CLASSES[name].from_config(tiny_pipe.scheduler.config), steps))

    ten, fifty = scales(10), scales(50)
    assert len(ten) == 10 and len(fifty) == 50
    assert sum(ten) / 10 * 2 < sum(fifty) / 50
    if name == "euler":
        assert ten[-1] == 0.5


def cfg_pp_hand_loop(pipe, name: str, lam: float) -> torch.Tensor:
    """CFG++ from the paper's formulas around the tiny UNet: zeros baseline, [uncond, cond] batches, one CPU
    generator per seed (as test_lab_parity's guider loop). DDIM: x0 = (x - sqrt(1 - a) eps_l) / sqrt(a), then
    x = sqrt(a') x0 + sqrt(1 - a') eps_u. Euler (its latents are x0 + sigma eps): x0 = x - sigma eps_l, then
    x = x0 + sigma' eps_u."""
    scheduler = scheduler_of(pipe, name)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, None, "cpu", 1, do_classifier_free_guidance=False)
    size = (64, 64)
    time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=embeds.dtype,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    b = len(SEEDS)
    latents = randn_tensor((b, 4, 8, 8), generator=[torch.Generator("cpu").manual_seed(s) for s in SEEDS],
                           dtype=embeds.dtype) * scheduler.init_noise_sigma
    text = torch.cat([torch.zeros_like(embeds)] * b + [embeds] * b)
    pooled2 = torch.cat([torch.zeros_like(pooled)] * b + [pooled] * b)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(latents, t)
            sigma, sigma_next = step_sigmas(scheduler, t)
            out = pipe.unet(torch.cat([x_in] * 2), t, encoder_hidden_states=text,
                            added_cond_kwargs={"text_embeds": pooled2, "time_ids": time_ids.repeat(2 * b, 1)},
                            return_dict=False)[0]
            eps_u, eps_c = out.chunk(2)
            eps_l = eps_u + lam * (eps_c - eps_u)
            if name == "euler":
                latents = (latents - sigma * eps_l) + sigma_next * eps_u
                scheduler._step_index += 1
            else:
                a, a_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
                x0 = (latents - (1 - a) ** 0.5 * eps_l) / a**0.5
                latents = a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps_u
    return latents


@pytest.mark.parametrize("name", ["euler", "ddim"])
def test_a_cfg_pp_run_is_the_papers_two_formulas(tiny_pipe, name):
    """Our mode (one scheduler.step with the step rule's prediction) against the hand loop: float32 through
    different but equivalent arithmetic; measured max difference below 1e-5 on latents up to ~15."""
    req = GenerationRequest(prompt=PROMPT, steps=STEPS, seeds=SEEDS, width=64, height=64, mode="cfg_pp",
                            guidance_scale=0.6, scheduler=name)
    ours = list(generate(tiny_pipe, req))[-1].latents
    expected = cfg_pp_hand_loop(tiny_pipe, name, 0.6)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    cfg = list(generate(tiny_pipe, GenerationRequest(**{**req.to_dict(), "mode": "cfg", "forks": ()})))[-1].latents
    assert (cfg - expected).abs().max() > 1e-2  # and it is not CFG at the same number


@pytest.mark.parametrize("changes, field", [
    (dict(guidance_scale=1.5), "guidance_scale"),
    (dict(scheduler="euler_a"), "scheduler"),
    (dict(scheduler="ddim", eta=0.5), "eta"),
])
def test_cfg_pp_refuses_what_its_identity_does_not_cover(changes, field):
    with pytest.raises(RequestError) as error:
        GenerationRequest(**{"prompt": PROMPT, "mode": "cfg_pp", "guidance_scale": 0.5, **changes})
    assert error.value.field == field


def test_whatif_recombines_a_cfg_run_into_cfg_pp_without_the_unet(tiny_pipe):
    """A CFG step's two cached predictions are all CFG++ needs: its clean estimate is x0 of eps_u + l (eps_c - eps_u),
    the same as CFG's at scale l (the renoising, which differs, is the next step's business)."""
    from pipeline.whatif import RunCache, whatif

    req = GenerationRequest(prompt=PROMPT, steps=STEPS, seeds=SEEDS, width=64, height=64, scheduler="euler")
    cache = RunCache(tiny_pipe, req)
    list(cache.consume(generate(tiny_pipe, req, record=True)))
    assert "cfg_pp" not in cache.modes_at(3)  # at the step's own scale, 7.5: no λ
    pp, cfg = whatif(cache, 3, 0.6, "cfg_pp"), whatif(cache, 3, 0.6, "cfg")
    torch.testing.assert_close(pp.pred_x0, cfg.pred_x0, atol=0, rtol=0)
    assert pp.difference_norm.min() > 0


def test_a_cfg_pp_events_clean_estimate_is_its_own(tiny_pipe):
    """The previews show CFG++'s x0, x - sigma eps_l (Euler's VE units), not the scheduler's estimate from the
    stepped prediction (CFG at w_t), which guides harder. Steps 2 on (step 1's input is not on an event);
    float32, tolerance 1e-4; the scheduler's estimate was measured 0.17 away at step 2, shrinking to 0 at the
    last step (sigma_next = 0, where w_t = l)."""
    from pipeline.guidance import COND, UNCOND

    req = GenerationRequest(prompt=PROMPT, steps=STEPS, seeds=SEEDS, width=64, height=64, mode="cfg_pp",
                            guidance_scale=0.6, scheduler="euler")
    events = list(generate(tiny_pipe, req, record=True))
    sigmas = run_sigmas(SCHEDULER_CLASSES["euler"].from_config(tiny_pipe.scheduler.config), STEPS)
    gaps = []
    for before, event, (sigma, sigma_next) in zip(events, events[1:], sigmas[1:]):
        eps_u, eps_c = event.record.predictions[UNCOND], event.record.predictions[COND]
        eps_l = eps_u + 0.6 * (eps_c - eps_u)
        torch.testing.assert_close(event.pred_x0, before.latents - sigma * eps_l, atol=1e-4, rtol=1e-4)
        schedulers = before.latents - sigma * event.record.noise_pred  # x0 of the stepped prediction
        gaps.append(float((schedulers - event.pred_x0).abs().max()))
    assert max(gaps) > 1e-2  # what the event showed before: the scheduler's estimate
