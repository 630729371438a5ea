"""The cross-attention recorder (pipeline/attention.py): it changes nothing it watches, its maps have the answers
the softmax dictates, and its rows come from the loop's own batch layout."""

from __future__ import annotations

import threading

import pytest
import torch

from pipeline import GenerationRequest, generate
from pipeline.attention import (AttentionRecorder, Watch, attention_probs, cross_attention_layers, token_grid,
                                word_map, words)
from pipeline.denoiser import Block, Conditioning, Layout
from pipeline.guidance import COND, NEGATIVE, UNCOND
from pipeline.loop import denoise_batch

# Sums of float32 softmaxes over 4 layers and a few steps: within a few ulps of the exact count.
SUM_TOL = dict(atol=1e-5, rtol=1e-6)
# The same rows computed in another batch or micro-batch: the UNet's matmuls may round differently.
BATCH_TOL = dict(atol=1e-5, rtol=1e-5)


def _request(**kwargs) -> GenerationRequest:
    settings = dict(prompt="a red cat", steps=3, width=64, height=64, seeds=(1, 2))
    return GenerationRequest(**{**settings, **kwargs})


def _record(pipe, request, *watches, steps=None, chunk=None):
    recorder = AttentionRecorder(tuple(watches), steps)
    events = list(denoise_batch(pipe, [request], chunk, watchers=[recorder]))
    return recorder, events[-1][0].latents


def test_recording_leaves_the_latents_bit_identical_and_restores_the_processors(tiny_pipe):
    """The recording processor returns exactly what diffusers' AttnProcessor2_0 returns: the run with the
    recorder on equals the run without, to the bit; and the UNet has its own processors back afterwards."""
    request = _request()
    before = dict(tiny_pipe.unet.attn_processors)
    plain = list(generate(tiny_pipe, request))[-1].latents
    recorder, recorded = _record(tiny_pipe, request, Watch(1), Watch(2))
    assert torch.equal(recorded, plain)
    assert recorder.maps[Watch(1)].total is not None
    after = tiny_pipe.unet.attn_processors
    assert all(after[name] is proc for name, proc in before.items())


def test_each_pixels_weights_sum_to_one_per_layer_and_step(tiny_pipe):
    """softmax over the 77 positions sums to 1 per pixel and head; averaging heads and bilinear upsampling keep
    that, so the total sums to layers x steps at every pixel, and each step's maps to the layer count."""
    recorder, _ = _record(tiny_pipe, _request(), Watch(2))
    maps = recorder.maps[Watch(2)]
    layers = cross_attention_layers(tiny_pipe.unet)
    assert layers == 4 and sorted(maps.steps) == [1, 2, 3]
    torch.testing.assert_close(maps.total.sum(dim=0), torch.full((8, 8), 3.0 * layers), **SUM_TOL)
    for step_maps in maps.steps.values():
        torch.testing.assert_close(step_maps.sum(dim=0), torch.full((8, 8), float(layers)), **SUM_TOL)
    assert bool((maps.total >= 0).all())


@pytest.mark.parametrize("width, height", [(64, 96), (96, 64), (72, 104)])
def test_non_square_sizes_map_onto_the_runs_own_latent_grid(tiny_pipe, width, height):
    """A 64x96 run's maps are 12x8 latents, each layer's token grid taken from the latent's aspect (not a square
    root, which has no answer for 8x12's 96 queries nor its 4x6 ones)."""
    recorder, latents = _record(tiny_pipe, _request(width=width, height=height, seeds=(1,)), Watch(1))
    total = recorder.maps[Watch(1)].total
    assert total.shape == (77, height // 8, width // 8) == (77, *latents.shape[-2:])
    torch.testing.assert_close(total.sum(dim=0), torch.full(total.shape[1:], 12.0), **SUM_TOL)


def test_token_grid_halves_the_latents_as_the_unet_does():
    assert token_grid(96, 12, 8) == (12, 8)
    assert token_grid(24, 12, 8) == (6, 4)
    assert token_grid(6, 12, 8) == (3, 2)
    assert token_grid(5 * 3, 9, 5) == (5, 3)  # ceil(9 / 2), ceil(5 / 2): stride-2 convolutions with padding 1
    with pytest.raises(ValueError, match="no halving"):
        token_grid(7, 12, 8)


def test_attention_probs_are_diffusers_own_attention_scores(tiny_pipe):
    """The recorder's weights, per layer, are what diffusers' `Attention.get_attention_scores` computes (the
    softmax of the classic AttnProcessor), averaged over heads."""
    attn = next(m for name, m in tiny_pipe.unet.named_modules() if name.endswith("attn2"))
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 16, attn.to_q.in_features, generator=generator)
    context = torch.randn(2, 77, attn.to_k.in_features, generator=generator)
    query, key = attn.head_to_batch_dim(attn.to_q(hidden)), attn.head_to_batch_dim(attn.to_k(context))
    expected = attn.get_attention_scores(query, key).view(2, attn.heads, 16, 77).mean(dim=1)
    torch.testing.assert_close(attention_probs(attn, hidden, context), expected, atol=1e-6, rtol=1e-5)


def test_rows_come_from_the_layout_under_perp_negs_three_parts(tiny_pipe):
    """Perp-Neg runs [baseline, prompt, negative] per step. SDXL's zero baseline makes every key 0, so its map is
    exactly uniform, 1/77 per position; the prompt's and the negative's are not, and differ. A guess of
    [uncond; cond] halves would have read the baseline's rows as the prompt's."""
    request = _request(mode="perp_neg", negative_prompt="blue dog", seeds=(1, 2))
    recorder, _ = _record(tiny_pipe, request, Watch(2, UNCOND), Watch(2, COND), Watch(2, NEGATIVE))
    layers_steps = cross_attention_layers(tiny_pipe.unet) * 3
    uniform = torch.full((77, 8, 8), layers_steps / 77)
    torch.testing.assert_close(recorder.maps[Watch(2, UNCOND)].total, uniform, **SUM_TOL)
    cond, negative = recorder.maps[Watch(2, COND)].total, recorder.maps[Watch(2, NEGATIVE)].total
    # tiny random weights: near uniform, but not quite
    assert (cond - uniform).abs().max() > 1e-3 and (negative - cond).abs().max() > 1e-3
    # Rows [u1, u2, c1, c2, n1, n2]: "the second half" would have read n1 as seed 2's prompt. Alone, seed 2's rows
    # are [u2, c2, n2]; its prompt's maps are the same both ways.
    alone, _ = _record(tiny_pipe, _request(mode="perp_neg", negative_prompt="blue dog", seeds=(2,)), Watch(2, COND))
    torch.testing.assert_close(cond, alone.maps[Watch(2, COND)].total, **BATCH_TOL)


def test_single_pass_steps_record_what_they_compute(tiny_pipe):
    """Outside the guidance interval a step runs the prompt alone (recorded); the baseline-only mode never runs
    the prompt (nothing recorded for it, and no map made up)."""
    interval = _request(seeds=(1,), steps=4, guidance_interval=(0.5, 1.0))
    recorder, _ = _record(tiny_pipe, interval, Watch(1), Watch(1, UNCOND))
    assert sorted(recorder.maps[Watch(1)].steps) == [1, 2, 3, 4]
    assert sorted(recorder.maps[Watch(1, UNCOND)].steps) == [3, 4]
    baseline_only, _ = _record(tiny_pipe, _request(seeds=(1,), mode="uncond_only"), Watch(1))
    assert baseline_only.maps[Watch(1)].total is None and not baseline_only.maps[Watch(1)].steps


def test_a_seeds_maps_do_not_depend_on_its_batch_nor_its_micro_batch(tiny_pipe):
    """Seed 2's maps are the same run alone, second in a batch, and in one-row micro-batches (its row is found
    within each chunk), as its image is."""
    alone, _ = _record(tiny_pipe, _request(seeds=(2,)), Watch(2))
    batched, _ = _record(tiny_pipe, _request(seeds=(1, 2)), Watch(2))
    chunked, _ = _record(tiny_pipe, _request(seeds=(1, 2)), Watch(2), chunk=1)
    for other in (batched, chunked):
        torch.testing.assert_close(other.maps[Watch(2)].total, alone.maps[Watch(2)].total, **BATCH_TOL)


def test_a_request_of_a_batch_is_found_by_its_lane(tiny_pipe):
    """Two requests in one batch: lane 1's seed 1 is the second request's row, whose maps are its own run's."""
    first, second = _request(seeds=(1,)), _request(prompt="a blue dog", seeds=(1,))
    recorder = AttentionRecorder((Watch(1, lane=1),))
    list(denoise_batch(tiny_pipe, [first, second], watchers=[recorder]))
    alone, _ = _record(tiny_pipe, second, Watch(1))
    torch.testing.assert_close(recorder.maps[Watch(1, lane=1)].total, alone.maps[Watch(1)].total, **BATCH_TOL)


def test_only_the_asked_steps_are_recorded(tiny_pipe):
    recorder, _ = _record(tiny_pipe, _request(seeds=(1,)), Watch(1), steps=(2,))
    maps = recorder.maps[Watch(1)]
    assert sorted(maps.steps) == [2]
    torch.testing.assert_close(maps.total, maps.steps[2])


def test_a_word_at_one_position_has_that_positions_map(tiny_pipe):
    """The tiny tokenizer spells by bytes: "a" is one position (1), "cat" three (5, 6, 7); a word's map is its
    positions' maps summed, and nothing of the others'."""
    found = words(tiny_pipe, "a red cat")
    assert [(w.text, w.positions) for w in found] == [("a", (1,)), ("red", (2, 3, 4)), ("cat", (5, 6, 7))]
    recorder, _ = _record(tiny_pipe, _request(seeds=(1,)), Watch(1))
    total = recorder.maps[Watch(1)].total
    torch.testing.assert_close(word_map(total, found[0]), total[1])
    torch.testing.assert_close(word_map(total, found[2]), total[5] + total[6] + total[7])


def test_words_say_where_prompt_2_puts_other_tokens_at_the_same_positions(tiny_pipe):
    """One map serves token i of both encoders: with Prompt 2 "blue dog", the positions of "a red cat" hold
    "b", "lue", "dog" in encoder 2's half; with Prompt 2 empty, both halves hold Prompt."""
    mixed = words(tiny_pipe, "a red cat", "blue dog")
    assert [(w.text, w.text_2, w.mixed) for w in mixed] == [("a", "b", True), ("red", "lue", True),
                                                           ("cat", "dog", True)]
    assert not any(w.mixed for w in words(tiny_pipe, "a red cat"))


def test_the_toy_world_has_no_attention_to_record(toy_pipe):
    recorder = AttentionRecorder((Watch(1),))
    request = GenerationRequest(prompt="red circle", steps=2, seeds=(1,))
    with pytest.raises(ValueError, match="no attention layers.*word ablation"):
        list(generate(toy_pipe, request, watchers=[recorder]))


def test_a_call_on_another_thread_is_neither_recorded_nor_indexed(tiny_pipe):
    """The recording processors are the shared UNet's while a watched call runs; another session's run on another
    thread goes through them too. Its rows are not the watched ones: the watched row 3 of a 4-row call must not
    be looked up in its 1-row batch (an IndexError in someone else's run), nor recorded."""
    recorder = AttentionRecorder((Watch(1),))
    layout = Layout(0, (Block(0, COND, (7, 8, 9, 1), 0),))  # seed 1 is row 3
    unet, t = tiny_pipe.unet, torch.tensor(999.0)
    conditioning = Conditioning(torch.zeros(4, 77, 64), torch.zeros(4, 32), torch.zeros(4, 6))
    errors = []

    def other_session():
        try:
            with torch.no_grad():
                unet(torch.zeros(1, 4, 8, 8), t, encoder_hidden_states=torch.randn(1, 77, 64),
                     added_cond_kwargs={"text_embeds": torch.zeros(1, 32), "time_ids": torch.zeros(1, 6)})
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    with recorder.watch(unet, layout, torch.zeros(4, 4, 8, 8), t, conditioning), recorder.chunk(slice(0, 4)):
        thread = threading.Thread(target=other_session)
        thread.start()
        thread.join()
    assert not errors, errors
    assert recorder.maps[Watch(1)].total is None
