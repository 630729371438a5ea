"""The Distribution tab: its pictures and tables from ScaleResults built here, its strict inputs, and its API on
a toy-world server (one streamed result per scale, errors that name the control) and on the tiny model
(no exact target: mosaics and proxies)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from PIL import Image

from pipeline.distribution import ExactStats, ScaleResult
from pipeline.models import toy
from ui import distribution_render as render
from ui.distribution_tab import Distributions, axis_text, parse_axis

PROMPT_ITEMS = np.array([item.colour == "blue" and item.shape == "square" for item in toy.ITEMS])  # 8 items


def targets(scale: float, adherence: float = 0.5) -> dict[str, np.ndarray]:
    """The three targets of "blue square", computed by hand (each sums to 1)."""
    data = PROMPT_ITEMS / PROMPT_ITEMS.sum()
    model = adherence * data + (1 - adherence) / len(toy.ITEMS)
    tilted = model**scale * (1 / len(toy.ITEMS)) ** (1 - scale)
    return {"data": data, "model": model, "tilted": tilted / tilted.sum()}


def exact_result(counts: np.ndarray, scale: float = 3.0, axis_value=None, done: int = 1, total: int = 1,
                 thumbnails: int = 4) -> ScaleResult:
    n = int(counts.sum())
    p = counts / n
    nonzero = p[p > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum())
    t = targets(scale)
    metrics = {"precision": float(p[PROMPT_ITEMS].sum()), "entropy": entropy, "effective_items": math.exp(entropy),
               "median_distance": 0.01, "off_data": 0.0, "noise_band": 0.2,
               **{f"tv_{k}": float(0.5 * np.abs(p - q).sum()) for k, q in t.items()}}
    stats = ExactStats(counts=counts, distances=np.zeros(n), on_data=np.ones(n, bool), targets=t, metrics=metrics)
    thumbs = tuple(toy.draw(toy.ITEMS[k], 32, 32) for k in range(thumbnails))
    return ScaleResult(scale=scale, axis_value=axis_value, done=done, total=total, n_seeds=n, thumbnails=thumbs,
                       exact=stats, proxies=None, seconds=0.25)


def one_item(index: int, n: int = 64) -> np.ndarray:
    counts = np.zeros(len(toy.ITEMS), dtype=np.int64)
    counts[index] = n
    return counts


# --- pictures and tables ---------------------------------------------------------------------------------


def test_histogram_draws_each_items_share_at_its_own_column():
    big_blue_square = next(k for k, item in enumerate(toy.ITEMS)
                           if item.words == ("big", "blue", "square", "top", "left"))
    image = np.asarray(render.items_histogram(exact_result(one_item(big_blue_square))).convert("RGB"))
    bottom = image.shape[0] - render.HISTOGRAM_BELOW
    columns = render.item_columns()
    blue = np.array(toy.COLOURS["blue"])
    # the counted item's bar rises nearly to the top (its share, 1, is the plot's maximum / 1.12) ...
    x = columns[big_blue_square] + render.BAR_WIDTH // 2 - 1
    filled = np.all(image[render.HISTOGRAM_TOP:bottom, x] == blue, axis=-1)
    assert filled.mean() > 0.8, filled.mean()
    # ... and no other item's column holds any of its colour above the axis (every other share is 0)
    for n, left in columns.items():
        if n != big_blue_square and toy.ITEMS[n].colour == "blue" and toy.ITEMS[n].size == "big":
            column = image[render.HISTOGRAM_TOP:bottom - 2, left + 3]
            assert not np.all(column == blue, axis=-1).any(), toy.ITEMS[n].caption


def test_items_are_grouped_by_colour_then_shape_then_size():
    order = [toy.ITEMS[n] for n in render.ITEM_ORDER]
    assert [item.colour for item in order[::24]] == list(toy.VOCABULARY["colour"])
    assert [item.shape for item in order[:24:8]] == list(toy.VOCABULARY["shape"])
    assert [item.size for item in order[:8:4]] == ["small", "big"]
    xs = list(render.item_columns().values())
    assert xs == sorted(xs) and len(set(xs)) == 96  # left to right, one column each


def test_marginals_bar_is_the_sampled_share():
    """All seeds on big items: the size panel's "big" bar fills the plot from 0 to 1, "small" is empty."""
    counts = np.zeros(96, dtype=np.int64)
    counts[[k for k, item in enumerate(toy.ITEMS) if item.size == "big"][:32]] = 2
    result = exact_result(counts)
    assert render.marginal(counts / counts.sum(), "size") == pytest.approx({"small": 0.0, "big": 1.0})
    image = np.asarray(render.marginal_rows(result, row_height=190).convert("RGB"))
    left = render.MARGIN_LEFT
    unit = (render.WIDTH - left - 8) / sum(len(toy.VOCABULARY[a]) + 1 for a in render.MARGINAL_ROWS[0])
    big_x, small_x = int(left + unit * 2), int(left + unit * 1)  # the centres of "big" and "small"
    plain = np.array(render.PLAIN_BAR)
    top, bottom = 24, 190 - 26  # the first row's plot: share 1 at the top, 0 at the bottom
    assert np.all(image[top + 20:bottom, big_x] == plain, axis=-1).mean() > 0.95
    assert not np.all(image[top:bottom - 1, small_x] == plain, axis=-1).any()


def test_scale_figure_has_title_legend_marginals_and_histogram():
    result = exact_result(one_item(0), scale=7.5)
    figure = render.scale_figure(result)
    assert figure.width == render.WIDTH and figure.height > 500
    assert render.headline(result)[0] == "s = 7.5 · 64 seeds"
    assert render.headline(result)[1].startswith("precision 0.00 · TV to model 0.995 (noise band 0.200)")
    assert render.caption(exact_result(one_item(0), axis_value=(0.0, 0.4)), "Guidance interval") == (
        "s = 3 · Guidance interval 0–0.4: precision 0.00, TV to model 0.995")


def test_table_has_one_row_per_result_with_the_exact_numbers():
    results = [exact_result(one_item(k), scale=s, done=i + 1, total=2) for i, (k, s) in enumerate([(0, 1.0), (5, 3.0)])]
    frame = render.table(results)
    assert list(frame["result"]) == ["s = 1", "s = 3"]
    for column in ("precision", "TV to data", "TV to model", "TV to tilted", "noise band: model", "entropy (nats)",
                   "effective items", "median distance", "off the data"):
        assert column in frame.columns, column
    assert frame["TV to data"].iloc[0] == pytest.approx(results[0].exact.metrics["tv_data"], abs=1e-4)


def test_curves_list_every_planned_point_and_fill_in_what_is_measured():
    """The page fixes a plot's legend from its first frame: every series is there from the first result on."""
    first = exact_result(one_item(0), scale=3.0, done=1, total=3)
    frames = render.curve_frames([first], [1.0, 3.0, 7.5])
    assert set(frames) == {"precision", "entropy", "tv"}
    precision = frames["precision"]
    assert list(precision["scale"]) == [1.0, 3.0, 7.5]
    assert precision["value"].isna().tolist() == [True, False, True]
    assert set(precision["series"]) == {"precision"}
    assert set(frames["tv"]["series"]) == {"to data", "to model", "to tilted", "noise band"}
    assert len(frames["tv"]) == 12
    with_axis = render.curve_frames([exact_result(one_item(0), axis_value=0.3)], [3.0], [0.3, 1.0], "Adherence")
    assert list(with_axis["precision"]["series"]) == ["Adherence 0.3", "Adherence 1"]


def test_noise_note_says_how_to_read_the_band():
    note = render.noise_note(exact_result(one_item(0, n=256)))
    assert "0.200" in note and "256 seeds" in note and "±0.06" in note


def test_mosaic_lays_thumbnails_out_in_seed_order():
    result = exact_result(one_item(0), thumbnails=10)
    image = render.mosaic(result)
    assert image.size == (8 * 34, 2 * 34)
    assert np.array_equal(np.asarray(image.crop((34, 0, 66, 32))), np.asarray(result.thumbnails[1].convert("RGB")))


# --- inputs ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(toy_pipe):
    from ui import Handlers

    return Distributions(Handlers(toy_pipe, model_name="toy"), presets=[])


GOOD = dict(prompt="blue square", prompt_2="", n_seeds=64, scales="1, 3", mode="cfg", scheduler="euler", eta=0.0,
            steps=4, size=64, adherence=0.5, axis="none", axis_values="", exact_start=False)


@pytest.mark.parametrize("changes, message", [
    (dict(scales="1, three"), "Lab scales: must be numbers separated by commas"),
    (dict(scales=""), "Lab scales: give at least one guidance scale"),
    (dict(scales="1, 300"), "Lab scales: each must be a number from 0.0 to 50.0, got 300.0"),
    (dict(scales=", ".join(["1"] * 2)), "Lab scales: each scale must appear once"),
    (dict(size=100), "Lab size:"),
    (dict(steps=0), "Lab steps:"),
    (dict(axis="guidance_interval", axis_values="0.4"), "Other axis values: Each a start-stop pair"),
    (dict(axis="mode", axis_values="cfg, nonsense"), "Other axis values: mode value 'nonsense'"),
    (dict(axis="guidance_rescale", axis_values=""), "Other axis values: give the values of Guidance rescale"),
])
def test_bad_input_names_the_control_and_what_it_allows(lab, changes, message):
    import gradio as gr

    with pytest.raises(gr.Error) as error:
        lab.settings(**{**GOOD, **changes})
    assert message in str(error.value.message), error.value.message


def test_good_input_is_taken_as_given(lab):
    settings = lab.settings(**{**GOOD, "axis": "guidance_interval", "axis_values": "0-1, 0-0.4", "adherence": 0.3})
    assert settings.scales == (1.0, 3.0) and settings.n_seeds == 64
    assert settings.axis_values == ((0.0, 1.0), (0.0, 0.4)) and settings.request.prompt_adherence == 0.3


def test_axis_text_reads_back():
    for axis, text in [("guidance_interval", "0-1, 0-0.4"), ("scheduler", "euler, ddim:1"), ("mode", "cfg, cond_only"),
                       ("prompt_adherence", "0.3, 1")]:
        name, values = parse_axis(axis, text)
        assert axis_text(name, values) == text


# --- the API, on a toy-world server ---------------------------------------------------------------------

API = dict(prompt="blue square", prompt_2="", n_seeds=64, scales="1, 3, 7.5", mode="cfg", scheduler="euler",
           eta=0.0, steps=4, size=64, adherence=0.5, axis="none", axis_values="", exact_start=False)
# gradio_client leaves State outputs out: an update is (status, figure, "Show result", note, numbers, three curves,
# samples, run id)
STATUS, FIGURE, SHOWN, NOTE, NUMBERS, PRECISION, ENTROPY, TV, SAMPLES, RUN_ID = range(10)


@pytest.fixture(scope="module")
def toy_server(toy_pipe, tmp_path_factory):
    from gradio_client import Client

    from tests.ui.conftest import free_port
    from ui import Handlers, build_demo

    handlers = Handlers(toy_pipe, model_name="toy", output_dir=tmp_path_factory.mktemp("outputs"))
    demo = build_demo(handlers, default_size=128)
    demo.queue(default_concurrency_limit=1)
    demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    try:
        yield Client(demo.local_url, download_files=False, verbose=False), handlers
    finally:
        demo.close()


@pytest.fixture
def toy_client(toy_server):
    return toy_server[0]


def gallery(value) -> list:
    """A gallery output: its items (an update that also picks the newest result carries them in "value")."""
    return value["value"] if isinstance(value, dict) else value


def status_text(update) -> str:
    return re.sub(r"<[^>]+>", "", update[STATUS])


def test_a_run_streams_one_result_per_scale(toy_client):
    job = toy_client.submit(**API, api_name="/run_lab")
    updates = list(job)
    assert job.exception() is None, job.exception()
    statuses = [status_text(u) for u in updates]
    assert statuses[0].startswith("Starting: 3 scales × 64 seeds")
    # one update per result, and between them (on a slow machine) a line a second saying the run is alive
    results = [u for u in updates[1:] if "(s = " in status_text(u)]
    ticks = [status_text(u) for u in updates[1:] if "(s = " not in status_text(u)]
    assert all(re.fullmatch(r"Measuring: scale [123] of 3, 64 seeds · \d+ s so far", t) for t in ticks), ticks
    assert len(results) == 3, statuses
    for k, update in enumerate(results, start=1):
        assert re.fullmatch(rf"(Measuring|Done): scale {k} of 3 \(s = [\d.]+\): 64 seeds, [\d.]+ s so far",
                            status_text(update))
        assert f'value="{k}" max="3"' in update[STATUS]  # the progress bar
        assert update[FIGURE]["path"].endswith(".png")  # the newest result's figure is the one shown
        assert len(update[SHOWN]["choices"]) == k and update[SHOWN]["value"] == update[SHOWN]["choices"][-1][0]
        assert len(update[NUMBERS]["data"]) == k
        assert len(gallery(update[SAMPLES])) == k
    assert statuses[-1].startswith("Done: scale 3 of 3 (s = 7.5)")
    assert [c[0] for c in results[-1][SHOWN]["choices"]] == ["s = 1", "s = 3", "s = 7.5"]
    # "Show result" brings back an earlier scale's figure, in the same session
    first = toy_client.predict("s = 1", api_name="/show_lab_result")
    assert first["path"].endswith(".png")
    assert Image.open(first["path"]).size == Image.open(results[-1][FIGURE]["path"]).size
    assert "noise band" in results[-1][NOTE]
    precision = results[-1][PRECISION]["data"]
    assert [row[0] for row in precision] == [1.0, 3.0, 7.5] and all(row[1] is not None for row in precision)


@pytest.mark.parametrize("changes, message", [
    (dict(n_seeds=10), "Lab seeds: must be from 64 to 1024"),
    (dict(n_seeds=64.5), "Lab seeds: must be a whole number from 1 to 1024, got 64.5: a fraction is not rounded"),
    (dict(scales="1, 99"), "Lab scales: each must be a number from 0.0 to 50.0"),
    (dict(adherence=1.5), "Lab prompt adherence: must be a number from 0 to 1"),
    (dict(mode="sideways"), "Lab guidance mode: must be one of"),
    (dict(size=100), "Lab size:"),
    (dict(axis="sideways"), "Other axis: must be one of"),
])
def test_api_errors_name_the_control_and_its_range(toy_client, changes, message):
    job = toy_client.submit(**{**API, **changes}, api_name="/run_lab")
    list(job)
    assert message in str(job.exception()), job.exception()


def test_describe_axis_fills_an_example(toy_client):
    update = toy_client.predict("guidance_interval", api_name="/describe_lab_axis")
    assert update["value"] == "0-1, 0-0.4, 0.4-1" and "start-stop pair" in update["info"]


def test_stop_ends_the_run_after_the_result_in_hand_and_says_where(toy_server, monkeypatch):
    """The library is held after its first result until the server has the Stop (no timing): the run shows
    nothing after the Stop, its worker ends after the result in hand, and the page says where it stopped."""
    import threading

    import ui.distribution_tab

    client, handlers = toy_server
    stop_received, real_stop, real_run_lab = threading.Event(), handlers.jobs.stop, ui.distribution_tab.run_lab

    def stop(run_id):
        found = real_stop(run_id)
        stop_received.set()
        return found

    def held_run_lab(pipe, settings):
        for k, result in enumerate(real_run_lab(pipe, settings)):
            yield result
            if k == 0:
                assert stop_received.wait(60), "no Stop arrived"

    monkeypatch.setattr(handlers.jobs, "stop", stop)
    monkeypatch.setattr(ui.distribution_tab, "run_lab", held_run_lab)
    job = client.submit(**{**API, "scales": "1, 2, 3, 4, 5, 6, 7, 8"}, api_name="/run_lab")
    statuses, run_id = [], None
    for update in job:
        run_id = run_id or update[RUN_ID]  # the stream's first update carries it
        statuses.append(status_text(update))
        if "scale 1 of 8" in statuses[-1]:
            client.predict(run_id, api_name="/stop_lab")
    assert job.exception() is None, job.exception()
    assert statuses[-1] == "Stopped after 1 of 8. The finished results are kept below.", statuses
    assert len(handlers.jobs) == 0  # the run is over, not running on unseen
    assert not [t for t in threading.enumerate() if t.name == "cfg-explorer-lab"]  # and its worker has ended


# --- the API on the tiny model: no exact target -------------------------------------------------------------


def test_a_real_model_has_no_target_and_shows_mosaics_and_proxies(client):
    job = client.submit(prompt="an otter", prompt_2="", n_seeds=4, scales="1, 4", mode="cfg", scheduler="euler",
                        eta=0.0, steps=2, size=64, axis="none", axis_values="", api_name="/run_lab")
    updates = list(job)
    assert job.exception() is None, job.exception()
    last = updates[-1]
    assert "No exact target on this model" in last[NOTE] and "proxies" in last[NOTE]
    assert [c[0] for c in last[SHOWN]["choices"]] == ["s = 1", "s = 4"] and last[FIGURE]["path"].endswith(".png")
    columns = last[NUMBERS]["headers"]
    assert any(c.startswith("proxy: ") for c in columns) and "precision" not in columns


def test_a_preset_sets_every_input_and_keeps_its_note(toy_pipe):
    import gradio as gr

    from pipeline import GenerationRequest
    from pipeline.distribution import LabPreset, LabSettings
    from ui import Handlers
    from ui.distribution_tab import INPUTS

    settings = LabSettings(GenerationRequest(prompt="blue square", steps=20, width=128, height=128, seeds=(0,),
                                             scheduler="ddim", eta=1.0, prompt_adherence=0.3),
                           (1.0, 3.0, 7.5), 256, axis="guidance_interval", axis_values=((0.0, 1.0), (0.0, 0.4)))
    lab = Distributions(Handlers(toy_pipe, model_name="toy"),
                        presets=[LabPreset("Why guidance", "Conditional only matches 53%.", settings)])
    values = dict(zip(INPUTS, lab.load_preset("Why guidance")))
    assert values == dict(prompt="blue square", prompt_2="", n_seeds=256, scales="1, 3, 7.5", mode="cfg",
                          scheduler="ddim", eta=1.0, steps=20, size=128, adherence=0.3, axis="guidance_interval",
                          axis_values="0-1, 0-0.4", exact_start=False)
    assert lab.load_preset("Why guidance")[-1] == "**Why guidance.** Conditional only matches 53%."
    # and the page's inputs read back into the preset's own settings
    assert lab.settings(**{k: v for k, v in values.items()}) == settings
    with pytest.raises(gr.Error, match="Lab preset: must be one of Why guidance"):
        lab.load_preset("nonsense")


def test_every_lab_preset_fits_the_tabs_inputs(toy_pipe):
    """A preset that set something the tab has no input for would lose it on the page: each one's settings
    must come back whole from the inputs it fills."""
    from pipeline.distribution import load_lab_presets
    from ui import Handlers
    from ui.distribution_tab import INPUTS

    presets = load_lab_presets()
    assert len(presets) >= 5
    lab = Distributions(Handlers(toy_pipe, model_name="toy"), presets=presets)
    for preset in presets:
        values = dict(zip(INPUTS, lab.load_preset(preset.name)))
        assert lab.settings(**values) == preset.settings, preset.name


def test_in_background_yields_items_ticks_while_waiting_and_raises_the_workers_error():
    import threading
    import time

    from ui.streaming import in_background

    def events():
        yield "first"
        time.sleep(0.35)
        raise ValueError("the library's own error")

    seen = []
    with pytest.raises(ValueError, match="the library's own error"):
        for item in in_background(events, threading.Event(), tick=0.1):
            seen.append(item)
    assert seen[0] == "first" and seen[1:] and set(seen[1:]) == {None}  # ticks while the worker was busy


def test_an_other_axis_gives_one_curve_per_value(toy_client):
    job = toy_client.submit(**{**API, "scales": "1, 3", "axis": "prompt_adherence", "axis_values": "0.3, 1"},
                            api_name="/run_lab")
    updates = list(job)
    assert job.exception() is None, job.exception()
    results = [u for u in updates[1:] if "(s = " in status_text(u)]
    assert [re.search(r"result (\d) of 4", status_text(u)).group(1) for u in results] == ["1", "2", "3", "4"]
    assert [c[0] for c in results[-1][SHOWN]["choices"]] == [
        "s = 1 · Prompt adherence 0.3", "s = 3 · Prompt adherence 0.3", "s = 1 · Prompt adherence 1",
        "s = 3 · Prompt adherence 1"]
    series = {row[2] for row in results[-1][PRECISION]["data"]}
    assert series == {"Prompt adherence 0.3", "Prompt adherence 1"}
    # at adherence 1 the toy is the data's own conditional: every sample follows the prompt, at any scale
    precision = {(row[2], row[0]): row[1] for row in results[-1][PRECISION]["data"]}
    assert precision[("Prompt adherence 1", 1.0)] == 1.0


def test_a_real_model_takes_at_most_its_own_number_of_seeds(client):
    job = client.submit(prompt="an otter", prompt_2="", n_seeds=65, scales="1, 4", mode="cfg", scheduler="euler",
                        eta=0.0, steps=2, size=64, axis="none", axis_values="", api_name="/run_lab")
    list(job)
    assert "Lab seeds: must be from 1 to 64" in str(job.exception())
