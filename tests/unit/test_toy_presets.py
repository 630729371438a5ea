"""Each preset's toy note says what its seeds show: every claim of the note, checked on those seeds.

A preset runs as the toy page runs it: its [toy] request, with the toy model's default adherence unless the
preset sets one (`Explore.for_model`). Where each seed lands is read with `nearest_items`, and the distance to
that item (`landings`) says whether the image is a data item at all; every image these notes describe is one.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from pipeline import GenerationRequest, generate
from pipeline.guidance.base import COND, UNCOND
from pipeline.models.toy import DEFAULT_ADHERENCE, WEAK_WIDTH, WORDS, Item, landings, nearest_items
from pipeline.presets import load_presets

PRESETS = {p.path.stem: p for p in load_presets()}


def land(pipe, request: GenerationRequest, **changes) -> list[Item]:
    """The data item each seed lands on, as the toy page runs `request` with `changes`; each must be on the data."""
    request = dataclasses.replace(request, **changes)
    if request.prompt_adherence is None:  # the page shows, and runs, the model's own default
        request = dataclasses.replace(request, prompt_adherence=DEFAULT_ADHERENCE)
    final = list(generate(pipe, request))[-1]
    spots = landings(pipe, final.pred_x0)
    assert [s.item for s in spots] == nearest_items(pipe, final.pred_x0)
    off = [(seed, s) for seed, s in zip(request.seeds, spots) if not s.on_data]
    assert not off, f"not data items: {off}"
    return [s.item for s in spots]


def says(note: str, *phrases: str) -> None:
    """The note makes these claims (word for word, whatever its line breaks); the test then checks each one."""
    flat = " ".join(note.split())
    for phrase in phrases:
        assert phrase in flat, f"the note no longer says {phrase!r}: update its check here"


def described(item: Item) -> str:
    return f"{item.size} {item.colour} {item.shape}"


def claims_standard_cfg(pipe, r, note):
    says(note, 'On seeds 1 and 2, "red circle" gives a big and a small red circle', 'adherence 0.5',
         'seed 2 gives a big yellow triangle; only seed 1 is still a red circle')
    assert r.prompt_adherence == 0.5 and r.seeds == (1, 2)
    assert [described(i) for i in land(pipe, r)] == ["big red circle", "small red circle"]
    cond = land(pipe, r, mode="cond_only")
    assert described(cond[0]) == "small red circle" and described(cond[1]) == "big yellow triangle"


def claims_reversed(pipe, r, note):
    says(note, 'a small blue triangle (seed 1) and a big yellow triangle (seed 2): no circle, and nothing red',
         'Lower the guidance scale to 0, where the image becomes the unconditional one')
    assert [described(i) for i in land(pipe, r)] == ["small blue triangle", "big yellow triangle"]
    assert land(pipe, r, guidance_scale=0.0) == land(pipe, r, mode="uncond_only")  # scale 0: the unconditional


def claims_negative_direction(pipe, r, note):
    says(note, 'seeds 1 and 2 both give a big yellow circle', 'both circles come out blue (a small and a big one)')
    assert [described(i) for i in land(pipe, r)] == ["big yellow circle"] * 2
    assert [described(i) for i in land(pipe, r, mode="cfg")] == ["small blue circle", "big blue circle"]


def claims_two_encoders(pipe, r, note):
    says(note, 'give a big yellow circle on seed 1', 'run again on the same seed: a small blue circle')
    assert r.seeds == (1,)
    assert [described(i) for i in land(pipe, r)] == ["big yellow circle"]
    assert [described(i) for i in land(pipe, r, prompt_2="")] == ["small blue circle"]


def claims_ddim_eta_0(pipe, r, note):
    says(note, 'deterministic, the starting noise alone decides the image',
         'On seed 1, "circle" gives a small blue circle')
    assert r.scheduler == "ddim" and r.eta == 0 and r.seeds == (1,)
    assert [described(i) for i in land(pipe, r)] == ["small blue circle"]
    assert land(pipe, r) == land(pipe, r)  # deterministic: the same seed, the same image


def claims_ddim_eta_1(pipe, r, note):
    says(note, 'On seed 1, "circle" gives a big red circle where eta 0 gave a small blue one: both are data items')
    assert r.scheduler == "ddim" and r.eta == 1 and r.seeds == (1,)
    assert [described(i) for i in land(pipe, r)] == ["big red circle"]
    assert [described(i) for i in land(pipe, r, eta=0.0)] == ["small blue circle"]


def claims_perp_neg(pipe, r, note):
    says(note, 'On seeds 1 to 8', 'red circles, triangles and two red squares (seeds 4 and 7)',
         'no square, six red triangles and two red circles (seeds 2 and 5)',
         'eight triangles, and two of them not red (seed 2 yellow, seed 7 blue)')
    assert r.seeds == tuple(range(1, 9))
    cfg = land(pipe, r, mode="cfg")
    assert {i.colour for i in cfg} == {"red"} and {i.shape for i in cfg} == {"circle", "triangle", "square"}
    assert [seed for seed, i in zip(r.seeds, cfg) if i.shape == "square"] == [4, 7]
    perp = land(pipe, r)
    assert {i.colour for i in perp} == {"red"}
    assert [seed for seed, i in zip(r.seeds, perp) if i.shape == "circle"] == [2, 5]
    assert sum(i.shape == "triangle" for i in perp) == 6
    custom = land(pipe, r, mode="negative_direction")
    assert {i.shape for i in custom} == {"triangle"}
    assert {seed: i.colour for seed, i in zip(r.seeds, custom) if i.colour != "red"} == {2: "yellow", 7: "blue"}


def sizes(items: list[Item]) -> list[str]:
    return [i.size for i in items]


CFG_RED_CIRCLES = ["big", "small", "big", "big", "big", "big", "big", "small"]  # CFG at 7.5 on seeds 1..8
SPREAD_RED_CIRCLES = ["small", "small", "big", "big", "big", "big", "small", "small"]


def claims_tangential_cfg(pipe, r, note):
    says(note, 'On seeds 1 to 8, "red circle" gives red circles on every seed, four small (seeds 1, 2, 7 and 8) '
               'and four big', 'still eight red circles, but six big ones; only seeds 2 and 8 stay small')
    assert r.mode == "tcfg" and r.guidance_scale == 7.5 and r.seeds == tuple(range(1, 9))
    tcfg = land(pipe, r)
    assert {(i.colour, i.shape) for i in tcfg} == {("red", "circle")} and sizes(tcfg) == SPREAD_RED_CIRCLES
    cfg = land(pipe, r, mode="cfg")
    assert {(i.colour, i.shape) for i in cfg} == {("red", "circle")} and sizes(cfg) == CFG_RED_CIRCLES


def claims_cfg_pp(pipe, r, note):
    says(note, 'CFG++ at λ = 0.6 over 30 Euler steps',
         'On seeds 1 to 8, "red circle" gives red circles on every seed, four small (seeds 1, 2, 7 and 8) and four big',
         'Switch the mode to Standard CFG at 7.5, same seeds: six big ones; only seeds 2 and 8 stay small',
         'Standard CFG at 0.6 guides away from the prompt, and only seeds 1 and 6 give a red circle')
    assert (r.mode, r.guidance_scale, r.steps, r.scheduler) == ("cfg_pp", 0.6, 30, "euler")
    pp = land(pipe, r)
    assert {(i.colour, i.shape) for i in pp} == {("red", "circle")} and sizes(pp) == SPREAD_RED_CIRCLES
    assert sizes(land(pipe, r, mode="cfg", guidance_scale=7.5)) == CFG_RED_CIRCLES
    low = land(pipe, r, mode="cfg")
    assert [seed for seed, i in zip(r.seeds, low) if (i.colour, i.shape) == ("red", "circle")] == [1, 6]


def claims_fdg(pipe, r, note):
    says(note, 'on seeds 1 to 8, "red circle" gives red circles on seeds 1, 3, 5, 6 and 8 only',
         'Set FDG scales to "1, 7.5", same seeds: eight red circles, landing exactly where Standard CFG at 7.5 lands')
    assert (r.mode, r.fdg_scales, r.seeds) == ("fdg", (7.5, 1.0), tuple(range(1, 9)))
    fine = land(pipe, r)
    assert [seed for seed, i in zip(r.seeds, fine) if (i.colour, i.shape) == ("red", "circle")] == [1, 3, 5, 6, 8]
    coarse = land(pipe, r, fdg_scales=(1.0, 7.5))
    assert coarse == land(pipe, r, mode="cfg", guidance_scale=7.5)
    assert {(i.colour, i.shape) for i in coarse} == {("red", "circle")} and sizes(coarse) == CFG_RED_CIRCLES


def claims_autoguidance(pipe, r, note):
    says(note, 'the weak model is the exact denoiser of the data blurred by 0.5',
         'On seeds 1 to 8, "red circle" lands every seed nearest the same data item as Conditional only: red '
         'circles on seeds 1, 3, 5 and 6, a yellow triangle, two blue triangles and a green square on the others, '
         'four big and four small', 'Switch to Standard CFG at 7.5, same seeds: eight red circles, six of them big',
         "every seed's x̂₀ lies 1.5 latent units from its item, beyond the 0.84 within which it would count as one")
    assert (r.mode, r.guidance_scale, r.auto_scale, r.seeds) == ("autoguidance", 1.0, 1.0, tuple(range(1, 9)))
    assert WEAK_WIDTH == 0.5
    request = dataclasses.replace(r, prompt_adherence=DEFAULT_ADHERENCE)
    spots = landings(pipe, list(generate(pipe, request))[-1].pred_x0)
    cond = land(pipe, r, mode="cond_only")
    assert [s.item for s in spots] == cond
    assert [seed for seed, i in zip(r.seeds, cond) if (i.colour, i.shape) == ("red", "circle")] == [1, 3, 5, 6]
    assert sorted(f"{i.colour} {i.shape}" for i in cond if (i.colour, i.shape) != ("red", "circle")) == [
        "blue triangle", "blue triangle", "green square", "yellow triangle"]
    assert sorted(sizes(cond)) == ["big"] * 4 + ["small"] * 4
    cfg = land(pipe, r, mode="cfg", guidance_scale=7.5)
    assert {(i.colour, i.shape) for i in cfg} == {("red", "circle")} and sizes(cfg).count("big") == 6
    assert all(1.45 < s.distance < 1.55 and not s.on_data for s in spots)  # "1.5"
    assert round(spots[0].bound, 2) == 0.84


def update_ratios(pipe, request: GenerationRequest) -> torch.Tensor:
    """||eps_c - eps_u|| / ||eps_u|| per step and image, as MAMBO-G reads it."""
    request = dataclasses.replace(request, prompt_adherence=request.prompt_adherence or DEFAULT_ADHERENCE)
    ratios = []
    for event in generate(pipe, request, record=True):
        cond, uncond = event.record.predictions[COND], event.record.predictions[UNCOND]
        ratios.append(torch.linalg.vector_norm(cond - uncond, dim=(1, 2, 3))
                      / torch.linalg.vector_norm(uncond, dim=(1, 2, 3)))
    return torch.stack(ratios)


def small_seeds(seeds, items: list[Item]) -> list[int]:
    return [seed for seed, i in zip(seeds, items) if i.size == "small"]


def claims_mambo_g(pipe, r, note):
    says(note, 'at most about 1% of the unconditional prediction, so α is 100 here',
         'at diffusers\' default α = 8 the seeds land exactly where Standard CFG at 15 lands',
         'On seeds 1 to 8, "green triangle" gives green triangles on every seed, two small (seeds 3 and 4) and six '
         'big: where Standard CFG at 10 lands', 'Switch the mode to Standard CFG, same seeds: eight big green triangles')
    assert (r.mode, r.guidance_scale, r.mag_alpha, r.seeds) == ("magnitude_aware", 15.0, 100.0, tuple(range(1, 9)))
    assert update_ratios(pipe, r).max() < 0.01  # measured: 0.0084
    mambo = land(pipe, r)
    assert {(i.colour, i.shape) for i in mambo} == {("green", "triangle")} and small_seeds(r.seeds, mambo) == [3, 4]
    assert mambo == land(pipe, r, mode="cfg", guidance_scale=10.0)
    cfg = land(pipe, r, mode="cfg")
    assert {described(i) for i in cfg} == {"big green triangle"}
    assert land(pipe, r, mag_alpha=8.0) == cfg


def claims_apg_mix(pipe, r, note):
    says(note, 'On seeds 1 to 8, "circle" gives circles on every seed, two small (seeds 4 and 7) and six big; seed 1 '
               'a big yellow one', 'Switch the mode to Standard CFG, same seeds: eight big circles, seed 1 still big '
               'and yellow', 'Set APG mix start step to 0 (APG after the first step): seed 1 too is small, a small red '
               'circle', 'From start step 6 on (APG from step 7), it lands exactly where Standard CFG lands')
    assert (r.mode, r.guidance_scale, r.apg_mix_start_step, r.seeds) == ("apg_mix", 20.0, 5, tuple(range(1, 9)))
    mix = land(pipe, r)
    assert {i.shape for i in mix} == {"circle"} and small_seeds(r.seeds, mix) == [4, 7]
    assert described(mix[0]) == "big yellow circle"
    cfg = land(pipe, r, mode="cfg")
    assert {i.shape for i in cfg} == {"circle"} and small_seeds(r.seeds, cfg) == []
    assert described(cfg[0]) == "big yellow circle"
    early = land(pipe, r, apg_mix_start_step=0)
    assert small_seeds(r.seeds, early) == [1, 4, 7] and described(early[0]) == "small red circle"
    assert all(land(pipe, r, apg_mix_start_step=start) == cfg for start in range(6, r.steps))


CLAIMS = {
    "01-standard-cfg": claims_standard_cfg,
    "02-reversed-guidance": claims_reversed,
    "03-negative-direction": claims_negative_direction,
    "04-two-text-encoders": claims_two_encoders,
    "05-ddim-eta-0": claims_ddim_eta_0,
    "06-ddim-eta-1": claims_ddim_eta_1,
    "07-perp-neg": claims_perp_neg,
    "08-tangential-cfg": claims_tangential_cfg,
    "09-cfg-pp": claims_cfg_pp,
    "10-fdg": claims_fdg,
    "11-mambo-g": claims_mambo_g,
    "12-apg-mix": claims_apg_mix,
    "13-autoguidance": claims_autoguidance,
}


def test_every_preset_has_its_claims_checked():
    assert set(CLAIMS) == set(PRESETS)


@pytest.mark.parametrize("stem", sorted(CLAIMS))
def test_the_toy_note_says_what_its_seeds_show(toy_pipe, stem):
    request, note = PRESETS[stem].for_model(toy=True)
    CLAIMS[stem](toy_pipe, request, note)


def sdxl_words(preset) -> set[str]:
    """The words of the preset's SDXL texts that the toy world does not know ("otter", "water", "planets")."""
    r = preset.request
    texts = [r.prompt, r.prompt_2, r.negative_prompt, r.negative_prompt_2, *(text for text, _ in r.weighted_prompts)]
    return set(re.findall(r"[a-z0-9]+", " ".join(texts).lower())) - set(WORDS) - ENGLISH


ENGLISH = {"a", "an", "and", "in", "of", "the", "with"}  # words a toy note needs too


@pytest.mark.parametrize("stem", sorted(PRESETS))
def test_the_toy_version_speaks_the_toys_words(stem):
    preset = PRESETS[stem]
    r, description = preset.for_model(toy=True)
    for field in ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2"):
        unknown = [w for w in getattr(r, field).split() if w.lower() not in WORDS]
        assert not unknown, f"{preset.path.name}: [toy] {field} carries {unknown}, which the toy world ignores"
    shown = set(re.findall(r"[a-z0-9]+", f"{preset.title(toy=True)} {description}".lower()))
    leftovers = sdxl_words(preset) & shown
    assert not leftovers, f"{preset.path.name}: the toy's name or note speaks SDXL's words: {leftovers}"


def test_the_perp_neg_preset_has_a_toy_name():
    preset = PRESETS["07-perp-neg"]
    assert preset.title(toy=False) == "Perp-Neg: an otter, without the water"
    assert preset.title(toy=True) == "Perp-Neg: red, without the squares"
