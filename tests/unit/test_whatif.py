"""What-if (recombining cached predictions) and fork (continuing from a cached step): exactness and budget."""

import dataclasses
import json

import pytest
import torch

from pipeline import GenerationRequest, generate
from pipeline.guidance import COND, UNCOND
from pipeline.metadata import read_settings, save_png
from pipeline.request import RequestError
from pipeline.whatif import RunCache, fork, path_name, whatif


def request(**changes):
    base = dict(prompt="an otter", steps=6, seeds=(3, 8), width=64, height=64, guidance_scale=7.5)
    return GenerationRequest(**{**base, **changes})


def cached_run(pipe, req, budget=None):
    cache = RunCache(pipe, req) if budget is None else RunCache(pipe, req, budget)
    events = list(cache.consume(generate(pipe, req, record=True)))
    return cache, events


def test_whatif_at_the_runs_own_scale_is_the_recorded_pred_x0(tiny_pipe):
    cache, events = cached_run(tiny_pipe, request())
    for event in events:
        alt = whatif(cache, event.step, event.guidance_scale)
        torch.testing.assert_close(alt.pred_x0, event.pred_x0, rtol=0, atol=1e-6)
        assert alt.difference_norm.abs().max() < 1e-5
        torch.testing.assert_close(alt.update_norm, alt.recorded_update_norm)


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
@pytest.mark.parametrize("scale, mode", [(3.0, None), (0.0, None), (4.0, "reversed"), (1.0, "cond_only"),
                                         (5.0, "tcfg"), (5.0, "magnitude_aware"), (7.5, "fdg")])
def test_whatif_at_step_one_is_what_a_run_at_that_setting_predicts(tiny_pipe, scheduler, scale, mode):
    # Step 1 starts from the same x_T whatever the guidance, so a real run at the new settings is the oracle.
    cache, events = cached_run(tiny_pipe, request(scheduler=scheduler))
    other = next(iter(generate(tiny_pipe, request(scheduler=scheduler, guidance_scale=scale, mode=mode or "cfg"))))
    alt = whatif(cache, 1, scale, mode)
    torch.testing.assert_close(alt.pred_x0, other.pred_x0, rtol=1e-5, atol=1e-5)
    assert alt.difference_norm.min() > 0  # the new setting does change the estimate


def test_apg_mix_is_not_recombined_part_way(tiny_pipe):
    """APG mix picks CFG or APG by its step count and carries momentum from the run's start: a what-if of one
    cached step has neither, so it is refused by name rather than guessed."""
    cache, _ = cached_run(tiny_pipe, request())
    with pytest.raises(ValueError, match="mode: 'apg_mix' carries its momentum"):
        whatif(cache, 3, 5.0, "apg_mix")
    assert "apg_mix" not in cache.modes_at(3) and {"tcfg", "magnitude_aware", "fdg"} <= set(cache.modes_at(3))


def test_whatif_names_what_the_step_did_not_compute(tiny_pipe):
    cache, _ = cached_run(tiny_pipe, request(guidance_scale=1.0))  # s = 1: the prompt's prediction alone
    with pytest.raises(RequestError) as error:
        whatif(cache, 2, 5.0)
    assert error.value.field == "guidance_scale" and "baseline" in error.value.detail
    with pytest.raises(RequestError, match="guidance_scale"):
        whatif(cache, 2, 99.0)


@pytest.mark.parametrize("scheduler, eta", [("euler", 0.0), ("euler_a", 0.0), ("ddim", 0.7)])
def test_fork_equals_one_run_of_the_piecewise_schedule(tiny_pipe, scheduler, eta):
    req = request(scheduler=scheduler, eta=eta)
    cache, events = cached_run(tiny_pipe, req)
    new = dataclasses.replace(cache.settings_at(3), guidance_scale=3.0)
    child = cache.branch(3, new)
    forked = list(child.consume(fork(tiny_pipe, cache, 3, new)))
    assert [e.step for e in forked] == [4, 5, 6]
    assert child.name == "s 7.5 → 3 from step 3"
    replay = list(generate(tiny_pipe, child.request))
    assert [e.guidance_scale for e in replay] == [7.5, 7.5, 7.5, 3.0, 3.0, 3.0]
    torch.testing.assert_close(forked[-1].latents, replay[-1].latents, rtol=0, atol=1e-5)
    assert (forked[-1].latents - events[-1].latents).abs().max() > 1e-3  # the new scale mattered

    # Fork the fork: later, with another mode; the path keeps both points.
    new2 = dataclasses.replace(child.settings_at(4), mode="reversed", guidance_scale=2.0)
    grandchild = child.branch(4, new2)
    forked2 = list(grandchild.consume(fork(tiny_pipe, child, 4, new2)))
    assert [p.step for p in grandchild.request.forks] == [3, 4]
    assert grandchild.name == "mode cfg → reversed, s 3 → 2 from step 4"
    replay2 = list(generate(tiny_pipe, grandchild.request))
    torch.testing.assert_close(forked2[-1].latents, replay2[-1].latents, rtol=0, atol=1e-5)


def test_a_fork_before_an_earlier_fork_drops_it(tiny_pipe):
    cache, _ = cached_run(tiny_pipe, request())
    child = cache.branch(4, dataclasses.replace(request(), guidance_scale=3.0))
    list(child.consume(fork(tiny_pipe, cache, 4, dataclasses.replace(request(), guidance_scale=3.0))))
    sibling = child.branch(2, dataclasses.replace(request(), guidance_scale=5.0))
    assert [(p.step, p.changes) for p in sibling.request.forks] == [(2, (("guidance_scale", 5.0),))]


def test_fork_may_change_only_guidance(tiny_pipe):
    cache, _ = cached_run(tiny_pipe, request(steps=3))
    with pytest.raises(RequestError) as error:
        next(fork(tiny_pipe, cache, 1, request(steps=3, seeds=(1,))))
    assert error.value.field == "seeds"
    dpm_cache, _ = cached_run(tiny_pipe, request(steps=3, scheduler="dpmpp_2m"))
    with pytest.raises(ValueError, match="scheduler"):
        next(fork(tiny_pipe, dpm_cache, 1, request(steps=3, scheduler="dpmpp_2m", guidance_scale=2.0)))


def test_the_fork_path_survives_png_metadata_and_replays(tiny_pipe, tmp_path):
    cache, _ = cached_run(tiny_pipe, request(steps=4))
    new = dataclasses.replace(cache.settings_at(2), mode="reversed", guidance_interval=(0.0, 0.9))
    events = list(fork(tiny_pipe, cache, 2, new))
    forked_request = cache.branch(2, new).request
    assert json.loads(json.dumps(forked_request.to_dict()))["forks"] == [
        {"step": 2, "changes": {"guidance_interval": [0.0, 0.9], "mode": "reversed"}}]
    path = save_png(events[-1].images[0], tmp_path / "fork.png", forked_request, seed=3)
    restored, seed = read_settings(path)
    assert restored == forked_request and seed == 3
    torch.testing.assert_close(list(generate(tiny_pipe, restored))[-1].latents, events[-1].latents, rtol=0, atol=1e-5)


def test_bad_fork_points_name_the_field():
    with pytest.raises(RequestError, match="forks"):
        request(forks=[{"step": 9, "changes": {"guidance_scale": 2.0}}])  # past the last step
    with pytest.raises(RequestError, match="forks.*prompt"):
        request(forks=[{"step": 2, "changes": {"prompt": "a cat"}}])
    with pytest.raises(RequestError, match="negative_prompt"):  # the new segment must be a valid request
        request(forks=[{"step": 2, "changes": {"mode": "negative_direction"}}])


def test_the_cache_keeps_every_step_that_fits_and_respects_its_budget(tiny_pipe):
    req = request()
    roomy, _ = cached_run(tiny_pipe, req)
    assert roomy.steps == [1, 2, 3, 4, 5, 6] and roomy.stride == 1
    assert roomy.nbytes <= sum(roomy.step_bytes(s) for s in roomy.steps)
    budget = roomy.nbytes // 2
    tight, _ = cached_run(tiny_pipe, req, budget)
    assert tight.stride == 2 and tight.steps == [2, 4, 6]
    assert tight.nbytes <= budget
    with pytest.raises(ValueError, match="step: 3 is not cached"):
        whatif(tight, 3, 2.0)
    with pytest.raises(ValueError, match="budget_bytes"):
        RunCache(tiny_pipe, req, 1000)


def test_whatif_reports_the_update_and_the_change_cfg_implies(tiny_pipe):
    """CFG's update over the prompt's prediction is eps_hat - eps_c = (s - 1)(eps_c - eps_u) (Ho & Salimans 2022,
    eq. 6), so its size scales with |s - 1|; the change of x0 is the recorded coefficient times the change of eps."""
    cache, events = cached_run(tiny_pipe, request())
    entry = cache.entry(2)
    cond, uncond = entry.predictions[COND], entry.predictions[UNCOND]
    gap = (cond - uncond).flatten(1).norm(dim=1)
    alt = whatif(cache, 2, 3.0)
    assert (alt.step, alt.scale, alt.mode) == (2, 3.0, "cfg")
    torch.testing.assert_close(alt.noise_pred, uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alt.update_norm, 2.0 * gap, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(alt.recorded_update_norm, 6.5 * gap, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(alt.difference, alt.pred_x0 - events[1].pred_x0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alt.difference_norm, alt.difference.flatten(1).norm(dim=1))
    assert alt.difference_norm.min() > 0
    assert whatif(cache, 2, 5.0, "reversed").mode == "reversed"
    with_negative, _ = cached_run(tiny_pipe, request(steps=2, negative_prompt="a cat"))  # CFG does not read it
    with pytest.raises(RequestError) as error:  # a mode whose predictions the step did not compute names the mode
        whatif(with_negative, 2, 5.0, "negative_direction")
    assert error.value.field == "mode" and "did not compute" in error.value.detail


def test_whatif_of_a_single_pass_or_zero_init_step(tiny_pipe):
    single, events = cached_run(tiny_pipe, request(guidance_scale=1.0))  # one pass: the prompt's prediction
    alt = whatif(single, 2, 1.0)
    torch.testing.assert_close(alt.pred_x0, events[1].pred_x0, rtol=0, atol=1e-6)
    # each is eps_c alone at s = 1
    assert set(single.modes_at(2)) == {"cfg", "cond_only", "apg", "cfg_zero_star", "tcfg", "magnitude_aware",
                                       "apg_mix"}
    # CFG-Zero*'s zero-init steps predict 0 (Fan et al. 2025): whatever the scale, the estimate is the recorded one.
    zero, events = cached_run(tiny_pipe, request(mode="cfg_zero_star", zero_init_steps=1))
    assert zero.entry(1).predictions == {}
    torch.testing.assert_close(whatif(zero, 1, 2.0).pred_x0, events[0].pred_x0, rtol=0, atol=0)


def test_fork_paths_and_names(tiny_pipe):
    cache, _ = cached_run(tiny_pipe, request())
    child = cache.branch(3, dataclasses.replace(request(), guidance_scale=3.0))
    # new_request's own forks are not read: a fork's request may start the next fork
    again = child.branch(3, dataclasses.replace(child.request, guidance_scale=4.0))
    assert [(p.step, p.changes) for p in again.request.forks] == [(3, (("guidance_scale", 4.0),))]  # replaces, at 3
    assert again.name == "s 7.5 → 4 from step 3"  # step 3 itself ran at 7.5: the first fork began after it
    assert path_name(again.request) == "s 7.5 → 4 from step 3" and path_name(request()) == ""
    schedule = cache.branch(2, dataclasses.replace(request(), guidance_schedule="linear"))
    assert schedule.name == "guidance_schedule constant → linear from step 2"
    assert cache.branch(2, request()).name == "no change from step 2"
    with pytest.raises(RequestError) as error:
        cache.branch(2, request(steps=7))
    assert error.value.field == "steps" and "only mode, guidance_scale" in error.value.detail


def test_whatif_checks_the_new_scale_and_reads_the_modes_own_settings(tiny_pipe):
    cache, events = cached_run(tiny_pipe, request(steps=2))
    with pytest.raises(RequestError) as error:  # refused as a request would refuse it, not only when a part is missing
        whatif(cache, 1, 99.0)
    assert error.value.field == "guidance_scale" and "50" in error.value.detail
    # Weighted prompts: the predictions needed come from the request's own prompts (Crowson's cfg_sample).
    weighted, events = cached_run(tiny_pipe, request(steps=2, mode="weighted",
                                                      weighted_prompts=(("an otter", 2.0), ("a planet", 0.5))))
    torch.testing.assert_close(whatif(weighted, 2, 7.5).pred_x0, events[1].pred_x0, rtol=0, atol=1e-6)


def test_a_path_is_named_in_the_words_a_page_gives(tiny_pipe):
    """Issue 18: a page names branches by its labels ("Reversed guidance"), not ids; the library takes its words."""
    cache, _ = cached_run(tiny_pipe, request())
    child = cache.branch(3, dataclasses.replace(request(), mode="reversed", guidance_scale=3.0))
    named = path_name(child.request, title=str.upper, shown=lambda name, value: f"<{value}>")
    assert named == "MODE <cfg> → <reversed>, GUIDANCE_SCALE <7.5> → <3.0> from step 3"
    assert path_name(child.request) == child.name == "mode cfg → reversed, s 7.5 → 3 from step 3"  # the defaults
