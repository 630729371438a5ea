"""The distribution lab (pipeline/distribution.py): exact targets, histograms that are `generate`'s own samples,
a perfect sampler inside its noise band, the exact start, proxies on a real (tiny) model, and validation.

The preset claims are measured in tests/unit/test_lab_presets.py.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from pipeline import GenerationRequest, RequestError, generate
from pipeline.distribution import (
    MODEL_MAX_SEEDS,
    LabSettings,
    curves,
    exact_start_latents,
    marginal,
    measure,
    noise_band,
    prompt_items,
    targets,
    vendi,
)
from pipeline.loop import _timesteps
from pipeline.models.toy import ITEMS, nearest_items

SMALL = dict(width=64, height=64, steps=8)


def _lab_request(**kw) -> GenerationRequest:
    return GenerationRequest(**{**dict(prompt="blue square", **SMALL), **kw})


def test_targets_sum_to_one_and_match_hand_computed_values() -> None:
    """"blue square" names 8 of the 96 items (2 sizes x 2 x 2 places). At a = 0.5 each of them has model weight
    0.5/8 + 0.5/96 = 13/192 and every other item 1/192; tilted at s = 3 is proportional to their cubes."""
    allowed = prompt_items(_lab_request())
    assert allowed.sum() == 8
    assert all(ITEMS[n].colour == "blue" and ITEMS[n].shape == "square" for n in np.flatnonzero(allowed))
    goal = targets(allowed, 0.5, 3.0)
    for p in goal.values():
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(goal["data"][allowed], 1 / 8, rtol=1e-12)
    np.testing.assert_allclose(goal["data"][~allowed], 0.0, atol=0)
    np.testing.assert_allclose(goal["model"][allowed], 13 / 192, rtol=1e-12)
    np.testing.assert_allclose(goal["model"][~allowed], 1 / 192, rtol=1e-12)
    np.testing.assert_allclose(goal["tilted"][allowed], 13**3 / (8 * 13**3 + 88), rtol=1e-12)
    np.testing.assert_allclose(goal["tilted"][~allowed], 1 / (8 * 13**3 + 88), rtol=1e-12)
    np.testing.assert_allclose(targets(allowed, 0.5, 1.0)["tilted"], goal["model"], rtol=1e-12)  # s = 1: the model
    np.testing.assert_allclose(targets(allowed, 0.5, 0.0)["tilted"], 1 / 96, rtol=1e-12)  # s = 0: p(x)
    np.testing.assert_allclose(targets(allowed, 1.0, 0.5)["tilted"], goal["data"], rtol=1e-12)  # a = 1: no mass off c
    assert marginal(goal["data"], "size") == pytest.approx({"small": 0.5, "big": 0.5})
    assert marginal(goal["data"], "colour") == pytest.approx({"red": 0, "green": 0, "blue": 1, "yellow": 0})
    # The tilted target never changes a property the prompt does not name (Bradley & Nakkiran 2024).
    assert marginal(goal["tilted"], "size") == pytest.approx({"small": 0.5, "big": 0.5})


def test_the_lab_histogram_counts_the_samples_generate_gives() -> None:
    """Euler ancestral (fresh noise every step) and 20 seeds: two chunks of 16 + 4, several scales in one batch;
    each seed must land where `generate` puts it (same generator per seed), exactly."""
    from pipeline import toy_pipeline

    pipe = toy_pipeline()
    request = _lab_request(scheduler="euler_a")
    results = list(measure(pipe, request, (1.0, 5.0), 20, first_seed=3, batch_images=24))
    assert [(r.scale, r.done, r.total) for r in results] == [(1.0, 1, 2), (5.0, 2, 2)]
    for result in results:
        found = []
        for seeds in (tuple(range(3, 19)), tuple(range(19, 23))):
            *_, final = generate(pipe, GenerationRequest(**{**request.to_dict(), "seeds": seeds,
                                                            "guidance_scale": result.scale}))
            found += nearest_items(pipe, final.latents)
        counts = Counter(found)
        assert [counts[item] for item in ITEMS] == result.exact.counts.tolist()
        assert len(result.thumbnails) == 20 and max(result.thumbnails[0].size) <= 96
    # Batching differently (each 16-seed chunk alone) changes nothing.
    alone = list(measure(pipe, request, (1.0, 5.0), 20, first_seed=3, batch_images=16))
    for a, b in zip(results, alone):
        np.testing.assert_array_equal(a.exact.counts, b.exact.counts)
        np.testing.assert_allclose(a.exact.distances, b.exact.distances, rtol=0, atol=1e-9)


def test_results_stream_one_batch_at_a_time(monkeypatch, toy_pipe) -> None:
    import pipeline.distribution as lab

    calls = []
    run_batch = lab._run_batch
    monkeypatch.setattr(lab, "_run_batch", lambda *a: calls.append(1) or run_batch(*a))
    stream = measure(toy_pipe, _lab_request(steps=2), (1.0, 2.0, 3.0), 16, batch_images=16)
    first = next(stream)
    assert (first.scale, first.done, first.total, len(calls)) == (1.0, 1, 3, 1)
    assert [r.scale for r in stream] == [2.0, 3.0] and len(calls) == 3


def test_by_default_each_scale_streams_as_it_finishes(monkeypatch, toy_pipe) -> None:
    """Without a forced batch size, a batch holds at most one scale's seeds, so the first result comes after
    that scale's UNet work alone (all three scales' 192 images would fit one batch)."""
    rows = []
    hook = toy_pipe.unet.register_forward_hook(lambda module, args, kwargs, out: rows.append(len(args[0])),
                                               with_kwargs=True)
    try:
        stream = measure(toy_pipe, _lab_request(steps=2), (1.0, 2.0, 3.0), 64)
        first = next(stream)
        assert (first.scale, first.done) == (1.0, 1)
        assert sum(rows) == 2 * 64  # 2 steps x 64 seeds x 1 pass (s = 1): the other scales have not run
        assert [r.scale for r in stream] == [2.0, 3.0]
    finally:
        hook.remove()


def test_thumbnails_are_the_first_64_seeds_final_images(toy_pipe) -> None:
    request = _lab_request(steps=2)
    (result,) = measure(toy_pipe, request, (3.0,), 70, first_seed=10)
    assert len(result.thumbnails) == 64 and result.thumbnails[0].size == (64, 64)  # 64 px: already small
    *_, final = generate(toy_pipe, GenerationRequest(**{**request.to_dict(), "seeds": (10, 73), "guidance_scale": 3.0}))
    assert result.thumbnails[0].tobytes() == final.images[0].tobytes()
    assert result.thumbnails[63].tobytes() == final.images[1].tobytes()


def test_a_perfect_sampler_stays_inside_its_noise_band(toy_pipe) -> None:
    """At adherence 1 and s = 1 the sampler is exact but for its discretisation and the start. From the exact
    start (q(x_T | c)) its histogram must sit within the 95% noise band of the data target; measured TV 0.10
    against a band of 0.14 at 128 seeds (16 px latents, 20 Euler steps)."""
    request = _lab_request(width=128, height=128, steps=20, prompt_adherence=1.0)
    (result,) = measure(toy_pipe, request, (1.0,), 128, exact_start=True)
    m = result.exact.metrics
    assert m["precision"] == 1.0 and m["off_data"] == 0.0
    assert m["tv_data"] <= m["noise_band_data"], m
    assert result.exact.distances.max() < 1e-3  # the exact denoiser lands on the items themselves
    assert result.thumbnails[0].size == (96, 96)  # 128 px images, downscaled for the mosaic


def test_the_exact_start_removes_the_terminal_snr_bias(toy_pipe) -> None:
    """SDXL's schedule keeps signal at its first timestep (Lin et al. 2023), so N(0, sigma_max^2) is the wrong
    start and biases even an exact model at s = 1. At 1024 seeds the bias shows above the noise: measured, big
    shapes 0.408 where the data has 0.5, TV to the data 0.092 against a band of 0.049; from the exact start
    0.477 and 0.044, inside the band."""
    request = _lab_request(width=128, height=128, steps=20, prompt_adherence=1.0)
    (usual,) = measure(toy_pipe, request, (1.0,), 1024)
    (exact,) = measure(toy_pipe, request, (1.0,), 1024, exact_start=True)
    assert usual.exact.metrics["tv_data"] > usual.exact.metrics["noise_band_data"]
    assert exact.exact.metrics["tv_data"] <= exact.exact.metrics["noise_band_data"]
    big = [marginal(r.exact.counts / 1024, "size")["big"] for r in (usual, exact)]
    assert big[0] < 0.45 and big[1] > big[0] + 0.04, big  # binomial SE of a share at 1024 seeds: 0.016


def test_samples_off_the_data_are_counted() -> None:
    """A toy whose items are Gaussians of width 0.3 never lands on an item itself: 0.3 per latent element is
    about 4.8 in distance at 64 px (256 elements), far above the on-data bound (0.018 there: a tenth of the
    distance between the closest two items, 0.18)."""
    from pipeline import toy_pipeline

    (result,) = measure(toy_pipeline(mixture_width=0.3), _lab_request(steps=20), (3.0,), 16)
    assert result.exact.metrics["off_data"] == 1.0 and result.exact.metrics["median_distance"] > 3


def test_noise_band_is_seeded_and_shrinks_with_n() -> None:
    p = np.full(8, 1 / 8)
    assert noise_band(128, p) == noise_band(128, p)
    assert noise_band(512, p) < noise_band(128, p) / 1.8  # ~ 1/sqrt(n)
    # A perfect sampler at n = 128 over 8 equal items: TV has mean ~ 0.09; its 95% quantile is well below 0.2.
    assert 0.08 < noise_band(128, p) < 0.2


def test_exact_start_is_the_noisy_data_distribution_seed_by_seed(toy_pipe) -> None:
    """A prompt naming one item: x_T's model input must be N(sqrt(ab_T) z, (1 - ab_T) I), for a sigma-space
    scheduler (Euler) and a variance-preserving one (DDIM); each seed's start is its own, whatever its chunk."""
    prompt = "big red circle top left"
    for scheduler in ("euler", "ddim"):
        request = _lab_request(prompt=prompt, prompt_adherence=1.0, scheduler=scheduler)
        latents = exact_start_latents(toy_pipe, request, range(256))
        assert latents.shape == (256, 4, 8, 8)
        torch.testing.assert_close(exact_start_latents(toy_pipe, request, (5, 6))[1], latents[6], rtol=0, atol=0)
        sched, timesteps = _timesteps(toy_pipe, request)
        model_input = sched.scale_model_input(latents * sched.init_noise_sigma, timesteps[0]).double()
        a = float(toy_pipe.unet.alpha_bar(timesteps[:1].double())[0])
        (item,) = np.flatnonzero(prompt_items(request))
        z = toy_pipe.unet.items(8, 8)[item].view(4, 8, 8)
        residual = (model_input - math.sqrt(a) * z) / math.sqrt(1 - a)  # standard normal, 256 x 256 values
        assert abs(float(residual.mean())) < 0.01 and abs(float(residual.std()) - 1) < 0.01
    # Seeded apart from the loop's noise: the start is not seed k's N(0, 1) draw.
    from pipeline.loop import make_generators

    loop_noise = torch.randn((4, 8, 8), generator=make_generators((0,))[0])
    assert float((latents[0] - loop_noise).abs().max()) > 0.1


def test_proxies_on_a_real_model(tiny_pipe) -> None:
    request = GenerationRequest(prompt="a cat", width=64, height=64, steps=2)
    results = list(measure(tiny_pipe, request, (1.0, 3.0), 6))
    for result in results:
        assert result.exact is None and set(result.proxies) == {"pairwise_latent_distance", "vendi"}
        assert 1.0 <= result.proxies["vendi"] <= 6.0 and result.proxies["pairwise_latent_distance"] > 0
        assert len(result.thumbnails) == 6
    assert set(curves(results)) == {"pairwise_latent_distance", "vendi"}


def test_vendi_and_pairwise_hand_values() -> None:
    from pipeline.distribution import proxies

    assert vendi(torch.ones(5, 3)) == pytest.approx(1.0)  # all alike: one effective sample
    assert vendi(torch.eye(4)) == pytest.approx(4.0)  # orthogonal: n
    # Two directions, one of them twice: eigenvalues of K/n are 2/3 and 1/3.
    two_thirds = math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert vendi(torch.tensor([[1.0, 0], [1, 0], [0, 1]])) == pytest.approx(two_thirds)
    x = torch.tensor([[0.0, 0], [3, 4], [0, 8]]).view(3, 2, 1, 1)
    assert proxies(x)["pairwise_latent_distance"] == pytest.approx((5 + 8 + 5) / 3)


def test_curves_sort_by_scale_per_axis_value(toy_pipe) -> None:
    results = list(measure(toy_pipe, _lab_request(steps=2), (3.0, 1.0), 4, axis="guidance_rescale",
                           axis_values=(0.0, 0.7)))
    assert [(r.axis_value, r.scale) for r in results] == [(0.0, 3.0), (0.0, 1.0), (0.7, 3.0), (0.7, 1.0)]
    precision = curves(results)["precision"]
    assert list(precision) == [0.0, 0.7] and [s for s, _ in precision[0.7]] == [1.0, 3.0]


BAD_SETTINGS = [
    (dict(n_seeds=0), "n_seeds", "from 1 to 1024"),
    (dict(n_seeds=1025), "n_seeds", "from 1 to 1024"),
    (dict(n_seeds=8.0), "n_seeds", "integer"),
    (dict(scales=()), "scales", "from 1 to 12"),
    (dict(scales=tuple(range(1, 14))), "scales", "from 1 to 12"),
    (dict(scales=(1.0, 51.0)), "scales", "from 0.0 to 50.0"),
    (dict(scales=(3.0, 3.0)), "scales", "once"),
    (dict(first_seed=-1), "first_seed", "integer"),
    (dict(axis="steps", axis_values=(10,)), "axis", "guidance_interval"),
    (dict(axis="guidance_rescale", axis_values=()), "axis_values", "from 1 to 6"),
    (dict(axis="guidance_rescale", axis_values=(0.5, 1.5)), "axis_values", "guidance_rescale value 1.5"),
    (dict(axis="scheduler", axis_values=(("ddim", 2.0),)), "axis_values", "eta"),
    (dict(axis_values=(1.0,)), "axis_values", "give an axis"),
    (dict(exact_start="yes"), "exact_start", "true or false"),
    (dict(exact_start=True, request=_lab_request(init_latents=torch.zeros(1, 4, 8, 8))), "exact_start", "own start"),
    (dict(request=_lab_request(seeds=(0, 1), init_latents=torch.zeros(2, 4, 8, 8))), "init_latents", "batch of 1"),
]


@pytest.mark.parametrize("change, field, words", BAD_SETTINGS)
def test_bad_settings_are_refused_naming_the_field(change, field, words) -> None:
    settings = dict(request=_lab_request(), scales=(1.0, 3.0), n_seeds=8) | change
    with pytest.raises(RequestError, match=words) as info:
        LabSettings(**settings)
    assert info.value.field == field


@pytest.mark.parametrize("change, field, words", [
    (dict(n_seeds=MODEL_MAX_SEEDS + 1), "n_seeds", f"from 1 to {MODEL_MAX_SEEDS} on this model"),
    (dict(exact_start=True), "exact_start", "only in the toy world"),
    (dict(axis="prompt_adherence", axis_values=(0.5,)), "prompt_adherence", "only the toy world"),
])
def test_a_real_model_refuses_toy_only_settings(tiny_pipe, change, field, words) -> None:
    request = GenerationRequest(prompt="a cat", width=64, height=64, steps=2)
    with pytest.raises(RequestError, match=words) as info:  # when called, before any result is asked for
        measure(tiny_pipe, request, (1.0,), **(dict(n_seeds=4) | change))
    assert info.value.field == field


def test_a_batch_encodes_each_prompt_once(monkeypatch, toy_pipe) -> None:
    """A lab batch holds hundreds of 16-seed requests of one prompt; encoding it per request cost 40% of a toy
    lab run's CPU time (measured: 17.3 s -> 10.5 s for 256 seeds x 7 scales)."""
    import pipeline.loop as loop

    calls = []
    encode = loop.encode
    monkeypatch.setattr(loop, "encode", lambda pipe, *texts: calls.append(texts) or encode(pipe, *texts))
    requests = [_lab_request(steps=1, seeds=(k,), prompt=p) for k, p in enumerate(["red", "red", "blue", "red"])]
    for _ in loop.denoise_batch(toy_pipe, requests):
        pass
    assert sorted(calls) == [("blue", ""), ("red", "")]
