"""The event stream's contract, and the truncation report for long prompts."""

from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from pipeline import GenerationRequest, denoise, generate
from pipeline.conditioning import encode, encode_part, truncations
from pipeline.guidance import COND, NEGATIVE, UNCOND, weighted_part
from pipeline.schedulers import SCHEDULER_CLASSES, make_scheduler, pred_original_sample
from tests.unit.test_guidance import UNetRecorder


def request(**changes):
    base = dict(prompt="an otter", steps=4, seeds=(9, 4), width=64, height=96)
    return GenerationRequest(**{**base, **changes})


def test_one_event_per_step_with_shapes_and_final_images(tiny_pipe):
    events = list(generate(tiny_pipe, request()))
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert {e.total for e in events} == {4}
    f = tiny_pipe.vae_scale_factor
    for event in events:
        assert event.latents.shape == event.pred_x0.shape == (2, 4, 96 // f, 64 // f)
        assert event.seeds == (9, 4)
        assert event.guidance_norm.shape == event.cosine.shape == (2,)
    timesteps = [e.timestep for e in events]
    assert timesteps == sorted(timesteps, reverse=True) and len(set(timesteps)) == 4
    assert all(e.images is None for e in events[:-1])
    assert [img.size for img in events[-1].images] == [(64, 96), (64, 96)]


def test_denoise_does_not_decode(tiny_pipe):
    assert all(e.images is None for e in denoise(tiny_pipe, request(steps=2)))


def fresh_scheduler(pipe, name: str, steps: int):
    scheduler = SCHEDULER_CLASSES[name].from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    return scheduler


def alpha_bars(pipe, name: str, steps: int) -> list[float]:
    """alpha_bar at each step of a run, read from a fresh scheduler: sigma-based ones (Euler, DPM-Solver)
    may sit between training timesteps, so from their sigmas (sigma^2 = (1 - a) / a, Karras et al. 2022,
    table 1); DDIM at its integer timesteps."""
    scheduler = fresh_scheduler(pipe, name, steps)
    if name == "ddim":
        return [float(scheduler.alphas_cumprod[int(t)]) for t in scheduler.timesteps]
    return [1.0 / (1.0 + float(sigma) ** 2) for sigma in scheduler.sigmas[:steps]]


# pred_x0 from the model output by the textbook formula, in float64, against the loop's float32 value
# (|x0| up to ~17): measured max difference 1.8e-6 (dpmpp_2m). pred_x0 replaced by the latents is off by
# more than 1 at the first step and by 0.04 or more at the second.
X0_TOL = dict(atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("scheduler", ["euler", "euler_a", "ddim", "dpmpp_2m"])
def test_every_scheduler_gives_pred_x0(tiny_pipe, scheduler):
    """pred_x0 against x0 = (x - sqrt(1 - a) eps) / sqrt(a) (Ho et al. 2020, eq. 15), worked out here from the
    UNet's own input x (the variance-preserving sample) and output eps at each step. cond_only: the UNet's
    output is the prediction the scheduler steps with."""
    steps = 3
    with UNetRecorder(tiny_pipe.unet) as recorder:
        events = list(denoise(tiny_pipe, request(scheduler=scheduler, mode="cond_only", steps=steps, seeds=(1, 2))))
    assert len(recorder.calls) == steps
    for event, (x, eps), a in zip(events, recorder.calls, alpha_bars(tiny_pipe, scheduler, steps)):
        a = torch.tensor(a, dtype=torch.float64)
        expected = (x.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()
        torch.testing.assert_close(event.pred_x0.double(), expected, **X0_TOL)
    # at the last step Euler's x0 is the latents themselves (sigma 0); before it they must differ
    assert (events[0].pred_x0 - events[0].latents).abs().max() > 1.0


def test_pred_x0_is_cleaner_than_latents_at_first_step(tiny_pipe):
    """With an exact denoiser, pred_x0 is the clean image from the very first step, while the latents are
    still mostly noise.

    The data set is one latent image x0*: its exact noise prediction is eps = (x_t - sqrt(a_t) x0*) /
    sqrt(1 - a_t) (Ho et al. 2020, eq. 4 solved for eps), put in place of the UNet for this run. DDIM at eta 0
    must then give pred_x0 = x0* at every step (eq. 12 of Song et al. 2020, its x0 term), and after the first
    of 6 steps the latents are sqrt(a_prev) x0* + sqrt(1 - a_prev) z, with sqrt(1 - a_prev) = 0.95.
    """
    steps = 6  # DDIM timesteps 831, 665, ...
    alphas = tiny_pipe.scheduler.alphas_cumprod  # the training schedule every scheduler here shares
    clean = torch.randn(1, 4, 12, 8, generator=torch.Generator().manual_seed(0))  # x0*, (1, 4, 96/8, 64/8)

    def exact_denoiser(sample, timestep, *args, **kwargs):
        a = alphas[int(timestep)]
        return ((sample - a.sqrt() * clean) / (1 - a).sqrt(),)

    with mock.patch.object(tiny_pipe.unet, "forward", exact_denoiser):
        events = list(denoise(tiny_pipe, request(scheduler="ddim", mode="cond_only", steps=steps, seeds=(1,))))
    # float32 round-off of the scheduler's x0 formula: measured max difference 8.3e-7 (|x0*| < 4)
    for event in events:
        torch.testing.assert_close(event.pred_x0, clean, atol=1e-5, rtol=1e-5)
    first = events[0]
    noise_left = (first.latents - clean).norm() / clean.norm()
    assert noise_left > 1.0, float(noise_left)  # measured 1.40: |(sqrt(a_prev) - 1) x0* + 0.95 z| / |x0*|


def test_loop_leaves_the_pipelines_scheduler_alone(tiny_pipe):
    before = (type(tiny_pipe.scheduler), tiny_pipe.scheduler.timesteps.clone())
    list(denoise(tiny_pipe, request(scheduler="dpmpp_2m", steps=3)))
    assert type(tiny_pipe.scheduler) is before[0]
    assert torch.equal(tiny_pipe.scheduler.timesteps, before[1])


def test_grad_mode_is_not_leaked_to_the_consumer(tiny_pipe):
    for _ in denoise(tiny_pipe, request(steps=2)):
        assert torch.is_grad_enabled()


def test_baselines(tiny_pipe):
    cond = encode(tiny_pipe, "an otter")
    assert encode_part(tiny_pipe, request(), COND, cond) is cond
    zeros = encode_part(tiny_pipe, request(), UNCOND, cond)
    assert torch.count_nonzero(zeros.prompt_embeds) == 0 and torch.count_nonzero(zeros.pooled) == 0
    assert zeros.prompt_embeds.shape == cond.prompt_embeds.shape
    empty = encode_part(tiny_pipe, request(uncond="empty"), UNCOND, cond)
    torch.testing.assert_close(empty.prompt_embeds, encode(tiny_pipe, "").prompt_embeds, atol=0, rtol=0)
    negative = encode_part(tiny_pipe, request(mode="negative_direction", negative_prompt="a planet"), NEGATIVE, cond)
    torch.testing.assert_close(negative.pooled, encode(tiny_pipe, "a planet").pooled, atol=0, rtol=0)
    assert not torch.equal(negative.pooled, cond.pooled)
    pairs = (("a cat", 2.0), ("a planet", 1.0))
    second = encode_part(tiny_pipe, request(mode="weighted", weighted_prompts=pairs), weighted_part(1), cond)
    torch.testing.assert_close(second.pooled, encode(tiny_pipe, "a planet").pooled, atol=0, rtol=0)


def test_empty_prompt_2_means_same_as_prompt(tiny_pipe):
    same = encode(tiny_pipe, "an otter", "")
    explicit = encode(tiny_pipe, "an otter", "an otter")
    other = encode(tiny_pipe, "an otter", "Van Gogh painting")
    torch.testing.assert_close(same.prompt_embeds, explicit.prompt_embeds, atol=0, rtol=0)
    assert not torch.equal(same.pooled, other.pooled)  # pooled comes from encoder 2 only


def test_truncation_report(tiny_pipe):
    long = "otter " * 20  # the tiny tokenizer spends one token per character and none for spaces
    assert truncations(tiny_pipe, prompt="an otter", prompt_2="") == []
    report = truncations(tiny_pipe, prompt=long, prompt_2="")
    assert {t.encoder for t in report} == {"text_encoder", "text_encoder_2"}  # empty prompt_2: both read prompt
    kept = tiny_pipe.tokenizer.model_max_length - 2  # minus begin and end tokens
    assert all(t.field == "prompt" and t.dropped_tokens == len(long.replace(" ", "")) - kept for t in report)
    assert report[0].dropped_text.replace(" ", "") in long.replace(" ", "")
    only_second = truncations(tiny_pipe, prompt="an otter", prompt_2=long)
    assert [(t.field, t.encoder) for t in only_second] == [("prompt_2", "text_encoder_2")]


def test_truncation_quotes_the_dropped_words_with_their_spaces(toy_pipe):
    """The toy's words are whole-word tokens: decoding the dropped ones printed "circleredcirclered..."."""
    long = "red circle, " * 60  # 3 tokens each: 180 of the 77 slots
    report = truncations(toy_pipe, prompt=long, prompt_2="")
    kept = toy_pipe.tokenizer.model_max_length - 2
    assert [t.dropped_tokens for t in report] == [180 - kept] * 2
    quoted = report[0].dropped_text
    assert quoted == "red circle, " * ((180 - kept) // 3)  # 75 tokens kept: 25 "red circle," and 35 dropped
    assert "circlered" not in quoted


def test_unknown_scheduler_names_the_field_and_the_choices(tiny_pipe):
    with pytest.raises(ValueError) as info:
        make_scheduler(tiny_pipe, "heun")
    assert str(info.value) == "scheduler: must be one of euler, euler_a, ddim, dpmpp_2m, got 'heun'"


def _one_dpm_step(pipe, algorithm_type: str):
    # plain DPM-Solver cannot end at sigma 0; diffusers asks for sigma_min there
    final = "zero" if algorithm_type.endswith("++") else "sigma_min"
    config = {k: v for k, v in pipe.scheduler.config.items() if k != "_use_default_values"}  # else it wins
    scheduler = DPMSolverMultistepScheduler.from_config({**config, "algorithm_type": algorithm_type,
                                                         "final_sigmas_type": final})
    scheduler.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    sample, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    output = scheduler.step(eps, scheduler.timesteps[0], sample, generator=g)
    return scheduler, output, sample, eps


@pytest.mark.parametrize("algorithm_type", ["dpmsolver++", "sde-dpmsolver++"])
def test_dpm_solver_plus_plus_x0_is_its_data_prediction(tiny_pipe, algorithm_type):
    """DPM-Solver++ returns no pred_original_sample; its stored model output is x0 = (x - sigma_t eps) / alpha_t
    (Lu et al. 2022, arXiv 2211.01095, sec. 4), checked here from the step's own sigma."""
    scheduler, output, sample, eps = _one_dpm_step(tiny_pipe, algorithm_type)
    assert getattr(output, "pred_original_sample", None) is None
    sigma = float(scheduler.sigmas[0])
    alpha_t, sigma_t = 1 / (1 + sigma**2) ** 0.5, sigma / (1 + sigma**2) ** 0.5
    torch.testing.assert_close(pred_original_sample(scheduler, output), (sample - sigma_t * eps) / alpha_t,
                               atol=1e-5, rtol=1e-5)


def test_a_scheduler_without_x0_is_refused_by_name(tiny_pipe):
    # DPM-Solver in noise-prediction form (not ++) stores eps, not x0; Euler with an output lacking x0 likewise
    scheduler, output, _, _ = _one_dpm_step(tiny_pipe, "dpmsolver")
    with pytest.raises(ValueError) as info:
        pred_original_sample(scheduler, output)
    assert str(info.value) == "scheduler: DPMSolverMultistepScheduler gives no clean-latent estimate for previews"
    euler = make_scheduler(tiny_pipe, "euler")
    with pytest.raises(ValueError, match="^scheduler: EulerDiscreteScheduler gives no clean-latent estimate"):
        pred_original_sample(euler, SimpleNamespace(prev_sample=torch.zeros(1)))
