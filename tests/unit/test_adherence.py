"""The toy model that learned its prompts only partly: p_a(x | c) = a p(x | c) + (1 - a) p(x), exactly.

`prompt_adherence` a enters the exact denoiser as a log-prior on the items; these tests check it against a
brute-force posterior, check that a = 1 is the exact data conditional, that a run sets it without changing
the shared model, that a real model refuses it, and what it does to samples (why guidance exists).
"""

from __future__ import annotations

import math

import pytest
import torch

from pipeline import GenerationRequest, generate, toy_pipeline
from pipeline.models.toy import ITEMS, ToyUNet, ideal_epsilon, item_prior, matching_items, nearest_items, read_words
from pipeline.request import RequestError


def brute_force_epsilon(x_t, items, prior, alpha_bar):
    """eps from the full Gaussian log-likelihood of x_t under each item, one row and one item at a time."""
    out = torch.empty_like(x_t)
    for b in range(x_t.shape[0]):
        a = float(alpha_bar[b])
        log_post = []
        for n in range(items.shape[0]):
            w = float(prior[b, n])
            log_lik = -float(((x_t[b] - math.sqrt(a) * items[n]) ** 2).sum()) / (2 * (1 - a))
            log_post.append((math.log(w) if w > 0 else -math.inf) + log_lik)
        post = torch.softmax(torch.tensor(log_post, dtype=torch.float64), dim=0)
        x0 = (post[:, None] * items).sum(dim=0)
        out[b] = (x_t[b] - math.sqrt(a) * x0) / math.sqrt(1 - a)
    return out


@pytest.mark.parametrize("adherence", [0.0, 0.3, 0.5, 1.0])
def test_denoiser_is_the_posterior_under_the_mixed_prior(toy_pipe, adherence: float) -> None:
    unet: ToyUNet = toy_pipe.unet
    items = unet.items(4, 4)  # 32 px: (96, 64)
    embeds = toy_pipe.encode_prompt("red circle", device="cpu", do_classifier_free_guidance=False)[0]
    embeds = torch.cat([embeds, torch.zeros_like(embeds)])  # the prompt, and the unconditional all-zero baseline
    allowed = matching_items(torch.logical_or(*read_words(embeds)))
    g = torch.Generator().manual_seed(0)
    x0 = items[[3, 50]]
    alpha_bar = torch.tensor([0.3, 0.6], dtype=torch.float64)
    x_t = alpha_bar.sqrt()[:, None] * x0 + (1 - alpha_bar).sqrt()[:, None] * torch.randn(x0.shape, generator=g,
                                                                                      dtype=torch.float64)
    prior = item_prior(allowed, adherence)
    expected = brute_force_epsilon(x_t, items, prior, alpha_bar)
    torch.testing.assert_close(ideal_epsilon(x_t, items, allowed, alpha_bar, prior=prior), expected,
                               rtol=1e-9, atol=1e-9)
    # ...and the UNet, called as diffusers calls it with the per-call argument, computes the same.
    t = torch.tensor([500.0, 500.0])
    sample = x_t.view(2, 4, 4, 4).float()
    eps = unet(sample, t, encoder_hidden_states=embeds, cross_attention_kwargs={"prompt_adherence": adherence}).sample
    want = brute_force_epsilon(sample.double().flatten(1), items, prior, unet.alpha_bar(t.double()))
    torch.testing.assert_close(eps.double().flatten(1), want, rtol=1e-5, atol=1e-5)  # float32 output


def test_prior_rows_sum_to_one_and_the_unconditional_stays_uniform() -> None:
    allowed = torch.zeros(2, len(ITEMS), dtype=torch.bool)
    allowed[0, :8] = True
    allowed[1] = True  # no word named: every item
    prior = item_prior(allowed, torch.tensor([0.25, 0.25]))
    torch.testing.assert_close(prior.sum(dim=1), torch.ones(2, dtype=torch.float64))
    assert float(prior[0, 0]) == pytest.approx(0.25 / 8 + 0.75 / 96)
    assert float(prior[0, 50]) == pytest.approx(0.75 / 96)
    torch.testing.assert_close(prior[1], torch.full((96,), 1 / 96, dtype=torch.float64))


def test_adherence_one_is_the_exact_data_conditional(toy_pipe) -> None:
    items, allowed = toy_pipe.unet.items(4, 4), torch.zeros(1, len(ITEMS), dtype=torch.bool)
    allowed[0, 10:14] = True
    x_t, alpha_bar = torch.randn(1, 64, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    masked = ideal_epsilon(x_t, items, allowed, alpha_bar)
    torch.testing.assert_close(ideal_epsilon(x_t, items, allowed, alpha_bar, prior=item_prior(allowed, 1.0)), masked,
                               rtol=0, atol=1e-12)


def _run(pipe, **kw):
    request = GenerationRequest(**{**dict(prompt="blue square", steps=12, seeds=tuple(range(8)), width=64,
                                          height=64, mode="cond_only"), **kw})
    *_, final = generate(pipe, request)
    return final.latents


def test_a_run_sets_adherence_without_changing_the_shared_model() -> None:
    pipe = toy_pipeline(prompt_adherence=0.5)
    default = _run(pipe)
    exact = _run(pipe, prompt_adherence=1.0)
    assert pipe.unet.config.prompt_adherence == 0.5
    torch.testing.assert_close(_run(pipe), default, rtol=0, atol=0)  # the next run still gets the default
    torch.testing.assert_close(_run(pipe, prompt_adherence=0.5), default, rtol=0, atol=0)
    torch.testing.assert_close(_run(toy_pipeline(prompt_adherence=1.0)), exact, rtol=0, atol=0)
    assert float((exact - default).abs().max()) > 0.1


def test_runs_batched_together_keep_their_own_adherence() -> None:
    from pipeline.loop import denoise_batch

    pipe = toy_pipeline()
    requests = [GenerationRequest(prompt="blue square", mode="cond_only", steps=12, seeds=(0, 1, 2), width=64,
                                  height=64, prompt_adherence=a) for a in (1.0, 0.2)]
    *_, finals = denoise_batch(pipe, requests)
    for request, event in zip(requests, finals):
        torch.testing.assert_close(event.latents, _run(pipe, seeds=(0, 1, 2), prompt_adherence=request.prompt_adherence))


def test_a_real_model_refuses_adherence(tiny_pipe) -> None:
    request = GenerationRequest(prompt="a cat", steps=2, width=64, height=64, prompt_adherence=0.5)
    with pytest.raises(RequestError, match="prompt_adherence: only the toy world") as info:
        next(generate(tiny_pipe, request))
    assert info.value.field == "prompt_adherence"


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_adherence_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(RequestError, match="prompt_adherence"):
        GenerationRequest(prompt="red", prompt_adherence=bad)
    with pytest.raises(ValueError, match="prompt_adherence"):
        toy_pipeline(prompt_adherence=bad)


def test_partial_adherence_is_why_guidance_exists(toy_pipe) -> None:
    """At the default a = 0.5, "conditional only" lands on the prompt's items for about a + (1 - a) * 8/96 of
    the seeds (the prior's share: 54%), and CFG at 7.5 for nearly all of them; at a = 1 conditional only does.
    32 seeds: a share of 0.54 lands within 0.54 +- 0.27 with probability above 0.999 (binomial)."""
    def share(**kw):
        latents = [_run(toy_pipe, seeds=tuple(range(k, k + 16)), steps=20, **kw) for k in (0, 16)]  # 16 a request
        found = nearest_items(toy_pipe, torch.cat(latents))
        return sum(item.colour == "blue" and item.shape == "square" for item in found) / len(found)

    prior_share = 0.5 + 0.5 * 8 / 96  # 8 blue squares (2 sizes x 2 x 2 places) of 96
    assert abs(share() - prior_share) < 0.27
    assert share(mode="cfg", guidance_scale=7.5) >= 0.9
    assert share(prompt_adherence=1.0) == 1.0
