"""The Explore page's what-if panel (issue 10), called directly: the what-if at the run's own settings shows the
recorded step, another scale changes it, a fork streams like a run and joins the branches, a fork's PNG replays
its path, and the server-wide store drops the oldest caches first."""

import dataclasses

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from pipeline import GenerationRequest, generate
from pipeline.metadata import read_settings
from pipeline.presets import load_presets
from ui import Handlers
from ui.controls import CONTROL_NAMES
from ui.explore import GENERATE_OUTPUTS, Explore
from ui.handlers import WhatIfStore
from ui.whatif import WhatIfPanel, difference_image

from .test_explore import page_values

STEPS = 6


@pytest.fixture(scope="module")
def explore(tiny_pipe):
    return Explore(Handlers(tiny_pipe, model_name="tiny", presets=load_presets()), default_size=64)


@pytest.fixture(scope="module")
def panel(explore):
    return WhatIfPanel(explore)


def run(explore, fork_path=None, **changes):
    """Generate on the page's values: the last update, by output name."""
    values = page_values(steps=STEPS, preview="linear", **changes)
    updates = list(explore.generate(*(values[name] for name in CONTROL_NAMES), fork_path=fork_path))
    return dict(zip(GENERATE_OUTPUTS, updates[-1]))


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else Image.open(image).convert("RGB"),
                      dtype=np.int16)


@pytest.fixture(scope="module")
def finished(explore):
    return run(explore)["history"]


def test_after_a_run_the_panel_shows_at_the_runs_scale_with_the_modes_its_predictions_allow(panel, finished):
    group, scale, mode, branch_list, branches, gallery, summary = panel.refresh(finished)
    assert group["visible"] is True and scale == 7.5 and mode["value"] == "cfg"
    allowed = [value for _, value in mode["choices"]]
    assert {"cfg", "reversed", "cond_only", "uncond_only"} <= set(allowed)
    assert "negative_direction" not in allowed  # a CFG run computed no negative prompt's prediction
    assert branch_list == [finished] and branches["choices"] == ["the run"]
    assert "every step" in summary


def test_the_whatif_at_the_runs_own_scale_is_the_recorded_step_and_another_scale_differs(panel, finished):
    same, summary = panel.preview(finished, 3, 7.5, "cfg", "linear")
    assert len(same) == 4  # per seed: the what-if x̂₀, then its difference from the run's
    assert [caption for _, caption in same] == ["seed 1 · s 7.5 · step 3", "seed 1 · Δ",
                                                "seed 2 · s 7.5 · step 3", "seed 2 · Δ"]
    recorded = finished.whatif.entry(3).pred_x0
    decoded = panel.runs.decoder("linear")(recorded)
    assert np.abs(pixels(same[0][0]) - pixels(decoded[0])).max() == 0
    assert np.abs(pixels(same[1][0]) - 128).max() <= 1  # mid-grey: no difference
    assert "| 1 |" in summary and summary.count("0.000") >= 2  # ‖Δx̂₀‖ is 0 for both seeds

    other, summary = panel.preview(finished, 3, 2.0, "cfg", "linear")
    assert np.abs(pixels(other[0][0]) - pixels(decoded[0])).max() > 0
    assert "scale 2** (the run used" in summary and ", 7.5)" in summary


def test_the_difference_image_is_amplified_by_a_stated_power_of_two():
    old = Image.new("RGB", (4, 4), (100, 100, 100))
    new = Image.new("RGB", (4, 4), (103, 97, 100))  # +3, -3, 0
    image, caption = difference_image(new, old, 5)
    assert caption == "seed 5 · Δ ×16" and image.getpixel((0, 0)) == (128 + 48, 128 - 48, 128)
    image, caption = difference_image(Image.new("RGB", (4, 4), (170, 60, 100)), old, 5)  # +70: x2 would clip
    assert caption == "seed 5 · Δ" and image.getpixel((0, 0)) == (198, 88, 128)
    assert difference_image(old, old, 5)[1] == "seed 5 · Δ"  # nothing to amplify


def test_whatif_errors_name_the_panels_controls(panel, finished):
    with pytest.raises(gr.Error, match=r"What-if scale: must be"):
        panel.preview(finished, 3, 99.0, "cfg", "linear")
    with pytest.raises(gr.Error, match=r"What-if mode: mode 'negative_direction'"):
        panel.preview(finished, 3, 5.0, "negative_direction", "linear")
    with pytest.raises(gr.Error, match=r"Revisit step: continue from a step before the last: 1 to 5"):
        list(panel.fork(finished, STEPS, 3.0, "cfg", "linear", 1, "pred_x0"))


def test_a_fork_streams_like_a_run_and_equals_the_piecewise_run(explore, panel, finished, tiny_pipe):
    updates = [dict(zip(GENERATE_OUTPUTS, u)) for u in panel.fork(finished, 3, 2.0, "cfg", "linear", 1, "pred_x0")]
    assert "Continuing from step 3/6" in updates[0]["status"] and "Guidance scale 7.5 → 2 from step 3" in updates[0]["status"]
    last = updates[-1]
    assert last["status"].startswith("**Done: step 6/6**")
    forked = last["history"]
    assert forked.name == "Guidance scale 7.5 → 2 from step 3" and forked.total == STEPS  # labels, not ids
    assert sorted(forked.frames) == list(range(1, STEPS + 1))  # the run's previews up to 3, the fork's after
    assert forked.frames[2] == finished.frames[2] and forked.frames[5] != finished.frames[5]
    # The fork's PNG records its path, and one run of that piecewise request gives the same image.
    request, seed = read_settings(last["downloads"][0])
    assert seed == 1 and [p.to_dict() for p in request.forks] == [{"step": 3, "changes": {"guidance_scale": 2.0}}]
    replay = list(generate(tiny_pipe, dataclasses.replace(request, seeds=(1, 2))))[-1].images
    assert np.abs(pixels(replay[0]) - pixels(last["downloads"][0])).max() <= 1

    branch_list, branches = panel.add_branch(forked, [finished])
    assert branches["choices"] == ["the run", "Guidance scale 7.5 → 2 from step 3"]
    # A fork of the fork is named by its whole path.
    grand = dict(zip(GENERATE_OUTPUTS, list(panel.fork(forked, 4, 2.0, "reversed", "linear", 1, "pred_x0"))[-1]))
    assert grand["history"].name == ("Guidance scale 7.5 → 2 from step 3 ▸ Guidance mode Standard CFG → Reversed guidance "
                                     "from step 4")  # the modes table's labels (issue 18), not "cfg → reversed"
    request, _ = read_settings(grand["downloads"][0])
    assert [p.step for p in request.forks] == [3, 4]
    # Forked again at its own fork step, the new point replaces the old: the name is the path the request runs.
    refork = dict(zip(GENERATE_OUTPUTS, list(panel.fork(forked, 3, 5.0, "cfg", "linear", 1, "pred_x0"))[-1]))
    assert refork["history"].name == "Guidance scale 7.5 → 5 from step 3"

    # Returning to the run shows its own PNGs and history again.
    gallery, history, downloads, slider, status, final_btn = panel.show_branch(branch_list, "the run")
    assert history is finished and downloads == finished.finals and "the run" in status
    assert [caption for _, caption in gallery["value"]] == ["seed 1", "seed 2"]
    assert gallery["label"] == "Images: the run"  # the page says which branch its images show


def test_a_restored_fork_png_replays_its_path(explore, panel, finished):
    last = dict(zip(GENERATE_OUTPUTS, list(panel.fork(finished, 2, 12.0, "cfg", "linear", 1, "pred_x0"))[-1]))
    png = last["downloads"][1]
    path, note, forget = explore.fork_path_of_png(png)
    assert path == [{"step": 2, "changes": {"guidance_scale": 12.0}}] and forget["visible"] is True
    assert "Guidance scale 7.5 → 12 from step 2" in note
    restored = explore.restore_from_png(png, page_values())
    controls = dict(zip(CONTROL_NAMES, restored))
    assert "**This PNG is a fork:** Guidance scale 7.5 → 12 from step 2" in restored[len(CONTROL_NAMES)]
    replayed = run(explore, fork_path=path, **{k: controls[k] for k in ("seed", "num_seeds", "guidance_scale")})
    assert np.abs(pixels(replayed["downloads"][1]) - pixels(png)).max() <= 1
    plain = run(explore, **{k: controls[k] for k in ("seed", "num_seeds", "guidance_scale")})
    assert np.abs(pixels(plain["downloads"][1]) - pixels(png)).max() > 1  # without the path, another image
    # A path that the controls no longer allow is refused, naming it.
    with pytest.raises(gr.Error, match=r"Fork path \(from the restored PNG\): fork steps must increase"):
        explore.check_run(*(page_values(steps=2)[name] for name in CONTROL_NAMES), fork_path=path)
    assert explore.fork_path_of_png(finished.finals[0])[0] is None  # a PNG of a plain run has no path


def test_the_store_drops_the_oldest_caches_beyond_its_total(tiny_pipe):
    request = GenerationRequest(prompt="an otter", steps=4, seeds=(1,), width=64, height=64)
    store = WhatIfStore(total_bytes=1, run_bytes=1)  # placeholder: resized below from one cache's need
    one = store.new(tiny_pipe, request)
    assert one is None  # one step alone is over the per-run budget: not cached, and the run goes on
    store = WhatIfStore(total_bytes=2**20, run_bytes=2**20)
    first = store.new(tiny_pipe, request)
    need = first.planned_bytes
    store = WhatIfStore(total_bytes=2 * need, run_bytes=need)
    caches = [store.new(tiny_pipe, request) for _ in range(3)]
    for cache in caches:
        for event in generate(tiny_pipe, request, record=True):
            cache.add(event)
    assert [c.dropped for c in caches] == [True, False, False]
    assert store.nbytes <= 2 * need and caches[0].nbytes == 0
    with pytest.raises(ValueError, match="dropped to make room"):
        caches[0].entry(1)
    del caches[1]  # a session that runs again lets its old cache go: it no longer counts
    assert store.nbytes == caches[-1].nbytes


def test_a_dropped_cache_says_to_generate_again(panel, explore):
    history = run(explore)["history"]
    history.whatif.drop()
    with pytest.raises(gr.Error, match=r"Revisit step: this run's cached predictions were dropped"):
        panel.preview(history, 3, 5.0, "cfg", "linear")


@pytest.fixture(scope="module")
def toy_explore(toy_pipe, tmp_path_factory):
    return Explore(Handlers(toy_pipe, model_name="toy", presets=load_presets(), output_dir=tmp_path_factory.mktemp("toy")),
                   default_size=toy_pipe.default_sample_size * toy_pipe.vae_scale_factor)


def test_a_fork_that_ends_where_its_parent_ended_says_so_and_the_whatif_follows_the_fork(toy_explore):
    """Issue 18: in the toy world a fork from step 5 at scale 7.5 → 1 is pixel-identical to its parent (the exact
    denoiser has committed each sample to one data item by then), although the what-if shows a large Δ, and the page
    did not say so. The fork's last status and the what-if now say which seeds end where the parent ended, and why;
    the what-if then shows the fork, not the last what-if of the run."""
    explore, panel = toy_explore, WhatIfPanel(toy_explore)
    size = explore.default_size
    values = page_values(steps=30, preview="linear", prompt="red circle", seed=1, num_seeds=4, width=size, height=size)
    parent = dict(zip(GENERATE_OUTPUTS, list(explore.generate(*(values[n] for n in CONTROL_NAMES)))[-1]))["history"]
    assert panel.preview(parent, 5, 1.0, "cfg", "linear")[1].count("|") > 0  # the what-if at scale 1 ...
    assert float(whatif_norm(parent, 5)) > 1.0  # ... moves x̂₀ a lot at step 5
    last = dict(zip(GENERATE_OUTPUTS, list(panel.fork(parent, 5, 1.0, "cfg", "linear", 1, "pred_x0"))[-1]))
    forked = last["history"]
    for a, b in zip(forked.finals, parent.finals):  # the premise: pixel for pixel the parent's images
        assert np.array_equal(pixels(a), pixels(b))
    assert last["status"].startswith("**Done: step 30/30**")
    assert "**The fork ends where its parent ended** for every seed" in last["status"]
    assert "By step 5 those samples had already settled" in last["status"] and "toy world" in last["status"]
    gallery, summary = panel.follow(forked, 30, 1.0, "cfg", "linear")
    assert summary.startswith("**Branch: Guidance scale 7.5 → 1 from step 5.** **The fork ends where its parent ended**")
    assert "Step 30: Standard CFG, scale 1** (the run used Standard CFG, 1)" in summary and len(gallery) == 8

    # From step 1 the fork can still change where a sample ends: the seeds that differ are named.
    early = dict(zip(GENERATE_OUTPUTS, list(panel.fork(parent, 1, 1.0, "cfg", "linear", 1, "pred_x0"))[-1]))
    same = [seed for seed, a, b in zip(parent.seeds, early["history"].finals, parent.finals)
            if np.array_equal(pixels(a), pixels(b))]
    assert len(same) < 4, "no seed changed: pick another early fork for this check"
    if same:
        assert f"for seed{'s' if len(same) > 1 else ''} {', '.join(map(str, same))}:" in early["status"]
    else:
        assert "every seed's final image differs from its parent's" in early["status"]


def whatif_norm(history, step: int):
    from pipeline import whatif

    return whatif(history.whatif, step, 1.0).difference_norm.max()


class PlainRuns:
    """A `RunStreams` that is not the Explore tab: the panel needs only this of the page that runs."""

    def __init__(self, pipe):
        self.pipe, self.admitted, self.streamed = pipe, [], []

    def decoder(self, name):
        from pipeline.previews import make_preview_decoder

        return make_preview_decoder(name, self.pipe, None)

    def admit(self, cache):
        self.admitted.append(cache)
        return cache

    def make_run(self, request, preview, every, source, cache, *, fork=None, history=None, start=0):
        from pipeline import fork as continue_run
        from ui.streaming import Run

        return Run(self.pipe, request, self.decoder(preview), every, source=lambda event: getattr(event, source),
                   cache=cache, events=lambda: continue_run(self.pipe, *fork), history=history, start=start)

    def stream_job(self, run, request, intro):
        from ui.run_stream import run_update

        self.streamed.append(run)
        yield run_update(status=intro)
        for frame in run.start().frames():
            yield run_update(status=f"step {frame.step}/{frame.total}", history=run.history)


def test_the_panel_runs_over_any_run_stream_not_only_the_explore_tab(finished, tiny_pipe):
    """The what-if panel depends on `ui.run_stream.RunStreams` (issue 20), so a plain one serves it: the what-if
    decodes with its decoder, and a fork is admitted to its store and streamed by it, from the revisited step."""
    runs = PlainRuns(tiny_pipe)
    panel = WhatIfPanel(runs)
    gallery, summary = panel.preview(finished, 3, 2.0, "cfg", "linear")
    assert len(gallery) == 4 and "scale 2**" in summary
    updates = [dict(zip(GENERATE_OUTPUTS, u)) for u in panel.fork(finished, 3, 2.0, "cfg", "linear", 1, "pred_x0")]
    assert "Continuing from step 3/6" in updates[0]["status"]
    assert updates[-1]["status"] == f"step {STEPS}/{STEPS}" and len(runs.admitted) == len(runs.streamed) == 1
    assert sorted(updates[-1]["history"].frames)[-1] == STEPS
