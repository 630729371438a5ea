"""The toy world's parts: tokenizer, text encoders, exact denoiser, linear VAE, and how they fit SDXL's pipeline.

The denoiser is checked against a brute-force mixture posterior written as plainly as possible: a Python loop
over batch rows and data items, Gaussian log densities in float64.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from pipeline import load_pipeline, toy_pipeline
from pipeline.conditioning import encode
from pipeline.previews import encode_image
from pipeline.models import SDXL_SCHEDULER_CONFIG, check_tokenizers
from pipeline.models.toy import (
    HIDDEN_SIZE,
    ITEMS,
    VOCABULARY,
    WORDS,
    caption_words,
    draw,
    ideal_epsilon,
    is_toy,
    matching_items,
    pixels_to_latents,
    read_words,
    to_pixels,
    toy_tokenizer,
)
from pipeline.previews import final_images, make_preview_decoder, vae_decode

SENTENCES = ("{w}", "a {w}", "{w} circle", "a {W}, then {w}.", "green {w} red", "{w}{w} {w}", "(({w}))", "big-{w}!")


def words_found(pipe, prompt: str, prompt_2: str = "") -> tuple[set[str], set[str]]:
    first, second = read_words(encode(pipe, prompt, prompt_2).prompt_embeds)
    return ({w for w, on in zip(WORDS, first[0].tolist()) if on}, {w for w, on in zip(WORDS, second[0].tolist()) if on})


# --- tokenizer and text encoders ---------------------------------------------------------------------


@pytest.mark.parametrize("word", WORDS)
def test_every_word_is_one_token_in_any_sentence(toy_pipe, word):
    for tokenizer in (toy_pipe.tokenizer, toy_pipe.tokenizer_2):
        for sentence in SENTENCES:
            text = sentence.format(w=word, W=word.upper())
            standalone = re.findall(r"[a-z]+", text.lower()).count(word)
            tokens = tokenizer.tokenize(text)
            assert tokens.count(word) == standalone, f"{text!r} -> {tokens}"


@pytest.mark.parametrize("word", WORDS)
def test_a_word_alone_is_exactly_its_token(word):
    tokenizer = toy_tokenizer()
    assert tokenizer.tokenize(word) == [word]
    assert tokenizer.tokenize(f"a {word.upper()}, {word}.") == ["a</w>", word, ",</w>", word, ".</w>"]


@pytest.mark.parametrize("text", ["bright", "reds", "smallsmall", "outright", "bluer", "red1", "triangles"])
def test_a_word_inside_a_longer_word_is_not_read(text):
    assert caption_words(f"a {text} thing") == []


def test_unknown_words_are_ignored(toy_pipe):
    assert caption_words("a watercolor painting of a reddish otter, redd") == []
    assert words_found(toy_pipe, "a watercolor painting of an otter") == (set(), set())
    assert words_found(toy_pipe, "a photo of a big red circle at the top") == ({"big", "red", "circle", "top"},) * 2


def test_penultimate_hidden_state_is_each_words_one_hot(toy_pipe):
    embeds = encode(toy_pipe, "red circle", "blue").prompt_embeds[0]  # (77, 2 * HIDDEN_SIZE)
    assert embeds.shape == (77, 2 * HIDDEN_SIZE)
    expected = torch.zeros_like(embeds)
    expected[1, WORDS.index("red")] = 1.0  # position 0 is the start token
    expected[2, WORDS.index("circle")] = 1.0
    expected[1, HIDDEN_SIZE + WORDS.index("blue")] = 1.0
    torch.testing.assert_close(embeds, expected, rtol=0, atol=1e-6)


def test_each_encoder_reads_its_own_prompt_and_prompt_2_defaults_to_prompt(toy_pipe):
    assert words_found(toy_pipe, "circle", "blue") == ({"circle"}, {"blue"})
    assert words_found(toy_pipe, "red circle") == ({"red", "circle"}, {"red", "circle"})


def test_empty_prompt_and_zeros_both_select_every_item(toy_pipe):
    empty = encode(toy_pipe, "", "").prompt_embeds
    for embeds in (empty, torch.zeros_like(empty)):
        first, second = read_words(embeds)
        assert not first.any() and not second.any()
        assert matching_items(first | second).all()


def test_matching_is_and_across_attributes_and_or_within_one():
    found = torch.zeros(3, len(WORDS), dtype=torch.bool)
    for row, words in enumerate((["red", "circle"], ["red", "blue", "circle"], ["big", "top", "left", "triangle"])):
        for w in words:
            found[row, WORDS.index(w)] = True
    allowed = matching_items(found)
    assert [set(ITEMS[n].caption for n in allowed[0].nonzero().flatten().tolist())] == [
        {i.caption for i in ITEMS if i.colour == "red" and i.shape == "circle"}
    ]
    assert int(allowed[0].sum()) == 8 and int(allowed[1].sum()) == 16 and int(allowed[2].sum()) == 4
    assert all(ITEMS[n].colour in ("red", "blue") for n in allowed[1].nonzero().flatten().tolist())


def test_data_set_is_every_combination_of_the_vocabulary():
    assert len(ITEMS) == math.prod(len(words) for words in VOCABULARY.values()) == 96
    assert len({item.caption for item in ITEMS}) == len(ITEMS)
    assert {"red", "green", "blue", "yellow"} <= set(VOCABULARY["colour"])
    assert {"circle", "square", "triangle"} <= set(VOCABULARY["shape"])


def test_drawing_is_deterministic_and_shows_the_colour():
    item = next(i for i in ITEMS if i.caption == "big red circle, top left")
    a, b = draw(item), draw(item)
    assert a.tobytes() == b.tobytes()
    pixel = a.getpixel((256 // 3, 256 // 3))
    assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60
    assert a.getpixel((250, 250)) == (128, 128, 128)


# --- the exact denoiser --------------------------------------------------------------------------------


def brute_force_epsilon(x_t, items, allowed, alpha_bar, width):
    """The mixture posterior, one row and one item at a time (float64)."""
    out = []
    for b in range(x_t.shape[0]):
        a = float(alpha_bar[b])
        var = a * width**2 + 1 - a
        log_p, means = [], []
        for n in range(items.shape[0]):
            if not allowed[b, n]:
                continue
            diff = x_t[b] - math.sqrt(a) * items[n]
            log_p.append(float(-(diff @ diff) / (2 * var)))  # the Gaussian's constant is the same for every n
            means.append(items[n] + math.sqrt(a) * width**2 / var * diff)  # E[x0 | x_t, n]
        top = max(log_p)
        weights = [math.exp(lp - top) for lp in log_p]
        x0 = sum(w * m for w, m in zip(weights, means)) / sum(weights)
        out.append((x_t[b] - math.sqrt(a) * x0) / math.sqrt(1 - a))
    return torch.stack(out)


@pytest.mark.parametrize("width", [0.0, 0.3])
def test_epsilon_equals_brute_force_mixture_posterior(width):
    g = torch.Generator().manual_seed(0)
    batch, n_items, dim = 6, 11, 40
    items = torch.randn(n_items, dim, generator=g, dtype=torch.float64)
    allowed = torch.rand(batch, n_items, generator=g) < 0.6
    allowed[:, 0] = True  # every row allows at least one item
    alpha_bar = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.01, 0.3], dtype=torch.float64)
    x0 = items[torch.randint(n_items, (batch,), generator=g)]
    noise = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    x_t = alpha_bar.sqrt()[:, None] * x0 + (1 - alpha_bar).sqrt()[:, None] * noise
    expected = brute_force_epsilon(x_t, items, allowed, alpha_bar, width)
    torch.testing.assert_close(ideal_epsilon(x_t, items, allowed, alpha_bar, width), expected, rtol=1e-9, atol=1e-9)


def test_unet_is_the_ideal_denoiser_of_its_captions(toy_pipe):
    unet = toy_pipe.unet
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    embeds = torch.cat([encode(toy_pipe, "red circle").prompt_embeds, encode(toy_pipe, "").prompt_embeds])
    t = torch.tensor(500)
    eps = unet(sample, t, encoder_hidden_states=embeds, added_cond_kwargs={}, return_dict=False,
               cross_attention_kwargs={"prompt_adherence": 1.0})[0]  # the data's own conditional (test_adherence)
    items = unet.items(8, 8)
    allowed = torch.tensor([[i.colour == "red" and i.shape == "circle" for i in ITEMS], [True] * len(ITEMS)])
    a = unet.alpha_bar(t.double().expand(2))
    expected = brute_force_epsilon(sample.double().flatten(1), items, allowed, a, 0.0).view_as(sample).float()
    torch.testing.assert_close(eps, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("caption", ["small green triangle, bottom right", "big blue square, top left", ""])
def test_at_small_noise_x0_of_a_noised_item_is_that_item(toy_pipe, caption):
    unet = toy_pipe.unet
    n = next(k for k, i in enumerate(ITEMS) if i.caption == caption) if caption else 17
    item = unet.items(16, 16)[n].float().view(1, 4, 16, 16)
    t = torch.tensor(10)  # alpha_bar 0.99, noise std 0.1 per latent
    a = float(unet.alpha_bar(t.double().view(1)))
    noise = torch.randn(item.shape, generator=torch.Generator().manual_seed(n))
    x_t = math.sqrt(a) * item + math.sqrt(1 - a) * noise
    embeds = encode(toy_pipe, caption).prompt_embeds
    eps = unet(x_t, t, encoder_hidden_states=embeds, return_dict=False)[0]
    x0 = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
    torch.testing.assert_close(x0, item, rtol=0, atol=1e-5)


def test_alpha_bar_is_the_schedulers_at_integer_and_fractional_timesteps(toy_pipe):
    unet = toy_pipe.unet
    train = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    t = torch.arange(0, 1000, 37, dtype=torch.float64)
    torch.testing.assert_close(unet.alpha_bar(t), train.alphas_cumprod.double()[t.long()], rtol=1e-12, atol=0)
    # Karras sigmas fall between training steps; the scheduler maps each sigma to a fractional timestep.
    karras = EulerDiscreteScheduler.from_config({**SDXL_SCHEDULER_CONFIG, "use_karras_sigmas": True})
    karras.set_timesteps(13)
    sigmas = karras.sigmas[:-1].double()
    assert not torch.equal(karras.timesteps, karras.timesteps.round())
    torch.testing.assert_close(unet.alpha_bar(karras.timesteps.double()), 1 / (1 + sigmas**2), rtol=1e-5, atol=0)


def test_timestep_outside_training_range_is_refused(toy_pipe):
    embeds = encode(toy_pipe, "red").prompt_embeds
    with pytest.raises(ValueError, match="timestep: must be from 0 to 999"):
        toy_pipe.unet(torch.zeros(1, 4, 8, 8), torch.tensor(1000.5), encoder_hidden_states=embeds)


def test_unet_takes_one_timestep_per_row(toy_pipe):
    unet = toy_pipe.unet
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    embeds = encode(toy_pipe, "yellow").prompt_embeds.repeat(2, 1, 1)
    both = unet(sample, torch.tensor([100, 700]), encoder_hidden_states=embeds, return_dict=False)[0]
    for row, t in enumerate((100, 700)):
        one = unet(sample[row : row + 1], t, encoder_hidden_states=embeds[:1]).sample
        torch.testing.assert_close(both[row : row + 1], one)


# --- the VAE and the pipeline --------------------------------------------------------------------------


def test_vae_is_sdxl_shaped_and_linear(toy_pipe):
    vae = toy_pipe.vae
    assert toy_pipe.vae_scale_factor == 8 and not vae.config.force_upcast
    pixels = to_pixels([draw(ITEMS[5], 64, 48)])
    latents = vae.encode(pixels).latent_dist.mode()
    assert latents.shape == (1, 4, 6, 8)
    torch.testing.assert_close(latents * vae.config.scaling_factor, pixels_to_latents(pixels))
    decoded = vae.decode(latents).sample
    assert decoded.shape == pixels.shape
    other = to_pixels([draw(ITEMS[50], 64, 48)])
    mix = vae.encode(0.3 * pixels - 0.5 * other).latent_dist.mode()
    torch.testing.assert_close(mix, 0.3 * latents - 0.5 * vae.encode(other).latent_dist.mode())
    z = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(3))
    a, b = z[:1], z[1:]
    torch.testing.assert_close(vae.decode(a + 2 * b).sample, vae.decode(a).sample + 2 * vae.decode(b).sample)


def test_a_decoded_image_encodes_back_to_its_latents(toy_pipe):
    """Issue 18: the decoder used to blur each block into its neighbours, so a generated image, saved and encoded
    again, was off its data item by a squared distance of 1.15, which the exact denoiser reads as noise and DDIM
    inversion amplifies. Now decoding keeps each block's mean: the round trip through an 8-bit PNG is exact to
    the PNG's rounding (tolerance: half a level of 255 per pixel, 0.004 in [-1, 1]; measured max 0.006 squared
    distance over all 96 items at 256 px)."""
    latents = toy_pipe.unet.items(32, 32).float().view(-1, 4, 32, 32)
    decoded = vae_decode(toy_pipe.vae, latents)
    torch.testing.assert_close(pixels_to_latents(decoded), latents, rtol=0, atol=1e-5)
    image = final_images(toy_pipe, latents[48:49])[0]  # a big red circle, as the app saves it
    again = encode_image(toy_pipe, image, 256, 256).double().flatten(1)
    assert float(((again - latents[48:49].double().flatten(1)) ** 2).sum()) < 0.01


def test_a_drawn_data_image_encodes_to_its_item(toy_pipe):
    n = 61
    latents = encode_image(toy_pipe, draw(ITEMS[n], 96, 64), 96, 64)
    torch.testing.assert_close(latents.flatten(1).double(), toy_pipe.unet.items(8, 12)[n : n + 1], rtol=0, atol=1e-6)


def test_linear_preview_is_the_toy_vae(toy_pipe):
    latents = toy_pipe.unet.items(8, 8)[40].float().view(1, 4, 8, 8)
    linear = make_preview_decoder("linear", toy_pipe)(latents)[0]
    full = make_preview_decoder("vae", toy_pipe)(latents)[0]
    a = torch.tensor(list(linear.getdata()), dtype=torch.float32)
    b = torch.tensor(list(full.getdata()), dtype=torch.float32)
    assert linear.size == full.size and float((a - b).abs().mean()) < 2.0


def test_toy_pipeline_is_a_deterministic_sdxl_pipeline():
    a, b = toy_pipeline(), toy_pipeline()
    assert type(a).__name__ == "StableDiffusionXLPipeline" and is_toy(a)
    assert a.default_sample_size * a.vae_scale_factor == 256
    for name in ("text_encoder", "text_encoder_2", "unet", "vae"):
        for (key, x), (_, y) in zip(getattr(a, name).state_dict().items(), getattr(b, name).state_dict().items()):
            assert torch.equal(x, y), f"{name}.{key}"
    check_tokenizers(a)


def test_toy_pipeline_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    toy_pipeline()
    assert torch.equal(torch.rand(3), expected)


def test_load_pipeline_toy():
    pipe = load_pipeline("toy", device="cpu")
    assert is_toy(pipe)


def test_mixture_width_must_not_be_negative():
    with pytest.raises(ValueError, match="mixture_width"):
        toy_pipeline(mixture_width=-0.1)


def test_half_precision_as_on_a_gpu_lands_on_the_same_items():
    from pipeline import GenerationRequest, generate
    from pipeline.models.toy import nearest_items

    pipe = toy_pipeline()
    request = GenerationRequest(prompt="green triangle", guidance_scale=7.5, steps=10, seeds=(1, 2, 3), width=128,
                                height=128)
    full = list(generate(pipe, request))[-1].latents
    pipe.to(dtype=torch.float16)
    half = list(generate(pipe, request))[-1].latents
    assert half.dtype == torch.float16
    assert nearest_items(pipe, half) == nearest_items(pipe, full)
    torch.testing.assert_close(half.float(), full, rtol=0, atol=5e-3)


def test_the_data_sets_fast_encoding_is_the_vaes():
    from pipeline.models.toy import images_to_latents

    images = [draw(item, 64, 48) for item in ITEMS[::7]]
    expected = pixels_to_latents(to_pixels(images)).double()
    torch.testing.assert_close(images_to_latents(images), expected, rtol=0, atol=1e-6)
