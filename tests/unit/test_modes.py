"""The table of guidance modes: every entry is usable as the loop and validation use it, and Perp-Neg, the
mode added through the table alone, against a hand computation and through the whole loop."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline import GUIDANCE_MODES, MODES, GenerationRequest, RequestError, perp_neg
from pipeline.guidance import COND, MODE_PARAMS, NEGATIVE, UNCOND, Source
from pipeline.loop import _combine, _Lane, denoise
from tests.unit.test_guidance import UNetCallCounter

SMALL = dict(steps=3, seeds=(2, 5), width=64, height=64)
# A run against another run whose UNet batches differ in size (3 passes vs 2 per image): the UNet's matmuls
# may block differently. The same bound as tests/unit/test_lab.py's BATCH_TOL, measured there at 2.4e-5.
BATCH_TOL = dict(atol=1e-4, rtol=1e-5)


def request_for(mode: str, **changes) -> GenerationRequest:
    base = dict(prompt="an otter", negative_prompt="a planet", mode=mode,
                weighted_prompts=(("an otter", 2.0), ("a river", 0.5)) if mode == "weighted" else ())
    if mode == "cfg_pp":  # its scale is λ in [0, 1]
        base["guidance_scale"] = 0.6
    return GenerationRequest(**{**base, **SMALL, **changes})


# --- the table -------------------------------------------------------------------------------------------------


def test_request_modes_are_the_table():
    assert MODES == tuple(GUIDANCE_MODES)
    assert all(name == mode.name for name, mode in GUIDANCE_MODES.items())
    assert len({mode.label for mode in GUIDANCE_MODES.values()}) == len(GUIDANCE_MODES)


@pytest.mark.parametrize("name", list(GUIDANCE_MODES))
def test_every_mode_has_a_formula_to_show(name):
    formula = GUIDANCE_MODES[name].formula
    assert formula.startswith("$$") and formula.count("$$") == 2 and len(formula.split("$$")[-1].strip()) > 20


@pytest.mark.parametrize("name", list(GUIDANCE_MODES))
@pytest.mark.parametrize("scale", [0.0, 1.0, 4.0])
def test_every_mode_combines_what_it_asks_for(name, scale):
    """One function type for all, (predictions, scale, request, state) -> a noise prediction of their shape,
    called as the loop calls it: a guided mode's lone prediction is passed through before its formula."""
    mode = GUIDANCE_MODES[name]
    request = request_for(name)
    parts = mode.needs(scale, request)
    assert parts and len(set(parts)) == len(parts)
    g = torch.Generator().manual_seed(0)
    preds = {part: torch.randn(2, 4, 8, 8, generator=g) for part in parts}
    lane = _Lane(request, mode, slice(0, 2), {}, mode.new_state(request))
    out = _combine(lane, preds, scale, like=preds[parts[0]], step=0)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    if len(parts) > 1 or not mode.guided:
        step = (0,) if mode.takes_step else ()  # the step index, for a mode told it (apg_mix)
        assert isinstance(mode.combine(preds, scale, request, mode.new_state(request), *step), torch.Tensor)


def test_every_param_is_a_request_field_with_its_default():
    request = GenerationRequest(prompt="an otter")
    for param in MODE_PARAMS.values():
        assert getattr(request, param.name) == param.default
        entries = param.default if param.length else (param.default,)
        assert all(param.range[0] <= entry <= param.range[1] for entry in entries)
        assert param.name in request.to_dict()
    assert GenerationRequest.from_dict(request.to_dict()) == request


@pytest.mark.parametrize("name", list(MODE_PARAMS))
@pytest.mark.parametrize("side", ["below", "above"])
def test_every_param_is_range_checked(name, side):
    param = MODE_PARAMS[name]
    lo, hi = param.range
    value = lo - 1 if side == "below" else hi + 1
    if param.length:  # a tuple Param: each entry is checked, and the error says which
        value = (*param.default[:-1], value)
    with pytest.raises(RequestError) as info:
        GenerationRequest(prompt="an otter", **{name: value})
    assert info.value.field == name and str(hi) in info.value.detail
    if param.length:
        assert f"entry {param.length}" in info.value.detail


@pytest.mark.parametrize("name", [name for name, param in MODE_PARAMS.items() if param.length])
@pytest.mark.parametrize("value", [(10.0,), (10.0, 5.0, 1.0), 10.0, "10, 5", (10.0, float("nan")), (True, 5.0)])
def test_a_tuple_param_takes_exactly_its_length_of_numbers(name, value):
    with pytest.raises(RequestError) as info:
        GenerationRequest(prompt="an otter", **{name: value})
    assert info.value.field == name


def test_a_tuple_param_round_trips_through_json_as_a_list():
    request = GenerationRequest(prompt="an otter", mode="fdg", fdg_scales=(7.5, 2.0))
    data = json.loads(json.dumps(request.to_dict()))
    assert data["fdg_scales"] == [7.5, 2.0]
    assert GenerationRequest.from_dict(data) == request and GenerationRequest.from_dict(data).fdg_scales == (7.5, 2.0)


@pytest.mark.parametrize("name", [n for n, m in GUIDANCE_MODES.items() if m.reads])
def test_a_mode_refuses_an_empty_text_it_reads(name):
    for field in GUIDANCE_MODES[name].reads:
        with pytest.raises(RequestError) as info:
            request_for(name, **{field: "  "})
        assert info.value.field == field


def test_apg_state_is_fresh_per_run():
    mode, request = GUIDANCE_MODES["apg"], request_for("apg")
    assert mode.new_state(request) is not mode.new_state(request)
    assert mode.new_state(request_for("apg", apg_momentum=0.0)) is None


# --- Perp-Neg against a hand computation -----------------------------------------------------------------------


def vectors(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    """One 4-vector per image, as a (B, 1, 2, 2) prediction."""
    return torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, 2, 2)


def test_perp_neg_by_hand():
    # image 0: u = 0, c - u = e1, n - u = e1 + e2 -> perpendicular part e2
    # image 1: c - u = 2 e2, n - u = e1 + e2 -> projection 2/4 * (2 e2) = e2, perpendicular part e1
    uncond = vectors((0, 0, 0, 0), (1, 1, 1, 1))
    cond = vectors((1, 0, 0, 0), (1, 3, 1, 1))
    neg = vectors((1, 1, 0, 0), (2, 2, 1, 1))
    # u + 3 (c - u) - 2 perp
    expected = vectors((3, -2, 0, 0), (1 - 2, 1 + 6, 1, 1))
    torch.testing.assert_close(perp_neg(cond, uncond, neg, 3.0, 2.0), expected, atol=1e-6, rtol=0)


def test_perp_neg_drops_a_negative_parallel_to_the_prompt():
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    neg = uncond + 0.7 * (cond - uncond)  # shares the prompt's direction only
    cfg = uncond + 5.0 * (cond - uncond)
    torch.testing.assert_close(perp_neg(cond, uncond, neg, 5.0, 3.0), cfg, atol=1e-5, rtol=0)


def test_perp_neg_keeps_a_perpendicular_negative_whole():
    pos = vectors((1, 0, 0, 0), (0, 2, 0, 0))
    neg = vectors((0, 0, 3, 0), (0, 0, 0, -1))  # each orthogonal to its image's guidance
    uncond = torch.zeros_like(pos)
    torch.testing.assert_close(perp_neg(pos, uncond, neg, 4.0, 1.5), 4.0 * pos - 1.5 * neg, atol=1e-6, rtol=0)


def test_perp_neg_with_no_guidance_direction_uses_the_whole_negative():
    uncond, neg = vectors((1, 2, 3, 4)), vectors((2, 2, 2, 2))
    out = perp_neg(uncond.clone(), uncond, neg, 7.5, 2.0)  # eps_c = eps_u: nothing to project on, and no NaN
    torch.testing.assert_close(out, uncond - 2.0 * (neg - uncond), atol=1e-6, rtol=0)


def test_perp_neg_projects_each_image_alone():
    g = torch.Generator().manual_seed(2)
    cond, uncond, neg = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    batch = perp_neg(cond, uncond, neg, 6.0, 2.0)
    for k in range(3):
        alone = perp_neg(cond[k : k + 1], uncond[k : k + 1], neg[k : k + 1], 6.0, 2.0)
        torch.testing.assert_close(batch[k : k + 1], alone, atol=1e-6, rtol=0)


def test_perp_neg_in_half_precision_does_not_overflow():
    g = torch.Generator().manual_seed(3)
    cond, uncond, neg = (8 * torch.randn(1, 4, 128, 128, generator=g) for _ in range(3))  # sums far above 65504
    half = perp_neg(cond.half(), uncond.half(), neg.half(), 7.5, 2.0)
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), perp_neg(cond, uncond, neg, 7.5, 2.0), atol=0.1, rtol=1e-2)


# --- Perp-Neg through the loop ---------------------------------------------------------------------------------


def test_perp_neg_runs_three_predictions_in_one_unet_call(tiny_pipe):
    request = request_for("perp_neg", guidance_scale=5.0)
    assert GUIDANCE_MODES["perp_neg"].needs(5.0, request) == (UNCOND, COND, NEGATIVE)
    assert [p.source for p in (UNCOND, COND, NEGATIVE)] == [Source.BASELINE, Source.PROMPT, Source.NEGATIVE]
    with UNetCallCounter(tiny_pipe.unet) as counter:
        events = list(denoise(tiny_pipe, request))
    assert counter.batches == [3 * len(SMALL["seeds"])] * SMALL["steps"]
    assert [e.unet_passes for e in events] == [3] * SMALL["steps"]
    assert events[-1].guidance_norm is not None


def test_perp_neg_at_negative_scale_zero_is_cfg(tiny_pipe):
    ours = list(denoise(tiny_pipe, request_for("perp_neg", perp_neg_scale=0.0)))
    cfg = list(denoise(tiny_pipe, request_for("cfg")))
    assert [e.unet_passes for e in ours] == [2] * SMALL["steps"]  # no pass for a negative it does not use
    torch.testing.assert_close(ours[-1].latents, cfg[-1].latents, atol=0, rtol=0)


def test_a_negative_prompt_equal_to_the_prompt_cancels_nothing_in_perp_neg(tiny_pipe):
    """The prompt as its own negative: CFG's negative direction cancels the guidance (eps_n = eps_c gives eps_c,
    the conditional model alone), while Perp-Neg finds nothing perpendicular to drop and is plain CFG."""
    same = dict(negative_prompt="an otter", guidance_scale=6.0)
    perp = list(denoise(tiny_pipe, request_for("perp_neg", perp_neg_scale=4.0, **same)))[-1].latents
    cfg = list(denoise(tiny_pipe, request_for("cfg", **same)))[-1].latents
    negative = list(denoise(tiny_pipe, request_for("negative_direction", **same)))[-1].latents
    cond_only = list(denoise(tiny_pipe, request_for("cond_only", **same)))[-1].latents
    torch.testing.assert_close(perp, cfg, **BATCH_TOL)
    torch.testing.assert_close(negative, cond_only, **BATCH_TOL)
    assert (perp - negative).abs().max() > 0.1  # and the two differ: the test compares two different things


def test_perp_neg_changes_the_image_where_the_negative_differs(tiny_pipe):
    cfg = list(denoise(tiny_pipe, request_for("cfg")))[-1].latents
    perp = list(denoise(tiny_pipe, request_for("perp_neg", perp_neg_scale=4.0)))[-1].latents
    assert (perp - cfg).abs().max() > 1e-2
