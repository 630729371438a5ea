"""The app's API, driven by gradio_client against a live server on the tiny model."""

import logging
import threading
import time

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from pipeline import GenerationRequest, generate
from pipeline.metadata import read_settings, save_png
from tests.ui.conftest import run_threads, wait_for_threads_to_end

SMALL = dict(prompt="an otter", width=64, height=64, preview="linear")


def run(client, **kwargs):
    job = client.submit(**{**SMALL, **kwargs}, api_name="/generate")
    outputs = list(job)
    return job, outputs


def captions(gallery):
    return [item.get("caption") for item in gallery] if isinstance(gallery, list) else None


def test_one_update_per_previewed_step_then_final_images(client, server):
    _, throttle = server
    throttle.hold()  # lockstep: the run takes a step only once the update of the step before has arrived
    job = client.submit(**SMALL, steps=6, num_seeds=3, seed=10, preview_every=2, api_name="/generate")
    outputs = throttle.lockstep(job, status=1)
    assert job.exception() is None
    statuses = [out[1] for out in outputs]
    assert "Starting" in statuses[0]
    assert [s.split("step ")[1].split("/")[0] for s in statuses[1:]] == ["1", "2", "3", "4", "5", "6"]
    galleries = [captions(out[0]) for out in outputs]
    previews = [g for g in galleries if g is not None][:-1]
    assert previews == [[f"seed {s} · step {k}/6" for s in (10, 11, 12)] for k in (2, 4)]
    final = outputs[-1]
    assert captions(final[0]) == ["seed 10", "seed 11", "seed 12"]
    assert "Done" in final[1]
    paths = [item["path"] for item in final[4]]
    assert len(paths) == 3 and all(p.endswith(".png") for p in paths)


def test_final_pngs_carry_their_settings(client):
    job, outputs = run(client, steps=3, num_seeds=2, seed=5, scheduler="euler_a", guidance_scale=4.0)
    assert job.exception() is None
    expected = GenerationRequest(prompt="an otter", steps=3, seeds=(5, 6), width=64, height=64, scheduler="euler_a",
                                 guidance_scale=4.0, negative_prompt="solar system with 9 planets")
    for item, seed in zip(outputs[-1][4], (5, 6)):
        assert read_settings(item["path"]) == (expected, seed)


def test_a_tuple_param_travels_from_the_api_to_the_png(client):
    """fdg's scales (one per pyramid level): the API takes the page's text; the PNG records the tuple."""
    job, outputs = run(client, steps=2, num_seeds=1, seed=5, mode="fdg", fdg_scales="7.5, 2")
    assert job.exception() is None
    request, _ = read_settings(outputs[-1][4][0]["path"])
    assert request.mode == "fdg" and request.fdg_scales == (7.5, 2.0)


def test_served_images_match_a_direct_library_run(client, tiny_pipe):
    job, outputs = run(client, steps=3, num_seeds=2, seed=5, mode="reversed", guidance_scale=3.0, scheduler="ddim",
                       eta=0.5)
    assert job.exception() is None
    paths = [item["path"] for item in outputs[-1][4]]
    # The request the controls above stand for, written out here (not read back from the served PNG): the
    # Negative direction prompt box starts with its example text, which only negative_direction reads.
    request = GenerationRequest(prompt="an otter", mode="reversed", guidance_scale=3.0, steps=3, seeds=(5, 6),
                                width=64, height=64, scheduler="ddim", eta=0.5,
                                negative_prompt="solar system with 9 planets")
    direct = list(generate(tiny_pipe, request))[-1].images
    assert len(paths) == len(direct) == 2
    for path, image in zip(paths, direct):
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(image))


def wait_until(condition, timeout: float = 60, what: str = "") -> None:
    """Wait for a condition on the job's stream (polled); `timeout` only bounds a failing test."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_cancel_stops_the_run_and_the_next_job_runs(client, server):
    _, throttle = server
    throttle.delay = 0.05
    before, start = run_threads(), throttle.calls
    job = client.submit(**SMALL, steps=100, num_seeds=1, api_name="/generate")
    wait_until(lambda: len(job.outputs()) >= 2, what="a first step")  # "Starting...", then a first step
    job.cancel()
    # the worker ends within a step of the cancel; then no UNet call can come
    wait_for_threads_to_end(run_threads() - before)
    statuses = [out[1] for out in job.outputs() if "step " in out[1]]
    steps_done = int(statuses[-1].split("step ")[1].split("/")[0])
    assert steps_done < 100 and throttle.calls - start < 100
    throttle.delay = 0.0
    job, outputs = run(client, steps=2, num_seeds=1)
    assert job.exception() is None and "Done" in outputs[-1][1]


def test_stop_ends_the_sessions_run_and_says_where(client, server):
    _, throttle = server
    throttle.delay = 0.05
    before = run_threads()
    job = client.submit(**SMALL, steps=100, num_seeds=1, api_name="/generate")
    wait_until(lambda: len(job.outputs()) >= 3, what="two steps")
    client.predict(job.outputs()[0][6], api_name="/stop")  # the run id from the stream's first update
    wait_until(job.done, what="the run to end after Stop")
    wait_for_threads_to_end(run_threads() - before)
    last = job.outputs()[-1]
    assert "Stopped at step" in last[1] and "/100" in last[1]
    assert last[2]["interactive"] is True  # the step slider revisits the stopped run's previews
    throttle.delay = 0.0
    job, outputs = run(client, steps=2, num_seeds=1)
    assert job.exception() is None and "Done" in outputs[-1][1]


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(steps=0), "Steps"),
        (dict(width=60), "Width"),
        (dict(seed=-1), "Seed"),
        (dict(guidance_scale=99), "Guidance scale"),
        (dict(width=100), "Width: must be a multiple of 8"),  # in the slider's range: the library refuses it
        (dict(mode="negative_direction", negative_prompt=""), "Negative direction prompt: must not be empty"),
        (dict(prompt=""), "Prompt: must not be empty"),
        (dict(steps=2.7), "Steps: must be a whole number from 1 to 200, got 2.7"),
        (dict(seed=2.5), "Seed: must be a whole number"),
        (dict(num_seeds=1.5), "Number of seeds: must be a whole number"),
        (dict(width=64.5), "Width: must be a whole number"),
        (dict(decompose="false"), "Decomposition view: must be true or false"),
        (dict(prompt=["an", "otter"]), "Prompt: must be text, got list"),
        (dict(guidance_scale="7"), "Guidance scale: must be a finite number"),
        (dict(seed=None), "Seed: is required"),
        (dict(mode="cfg_zero_star", zero_init_steps=2), "Zero-init steps: must be less than steps (2)"),
        (dict(decompose=True, seed=50, decompose_seed=1), "Decomposition seed: must be one of this run's seeds"),
        (dict(preview="nope"), "Preview decoder"),
        (dict(scheduler="heun"), "Scheduler"),
        (dict(mode="fdg", fdg_scales="10, 31"), "FDG scales (fine, coarse): must be 2 numbers separated by commas"),
        (dict(mode="fdg", fdg_scales="10"), "FDG scales (fine, coarse): must be 2 numbers separated by commas"),
    ],
)
def test_bad_input_names_the_field_and_the_app_keeps_serving(client, changes, field):
    job = client.submit(**{**SMALL, "steps": 2, **changes}, api_name="/generate")
    list(job)
    error = job.exception()
    assert error is not None and field in str(error), error
    job, outputs = run(client, steps=2, num_seeds=1)
    assert job.exception() is None and "Done" in outputs[-1][1]


@pytest.mark.parametrize("changes", [dict(steps=0), dict(seed=None), dict(width=100)])
def test_a_refused_value_logs_one_line_and_no_traceback(client, capfd, caplog, changes):
    """A refused value is an expected outcome: it wrote a traceback per refusal to the server's log (issue 18,
    point 15). Whether a control's own check refuses it (Steps 0, no Seed) or the library does (Width 100)."""
    caplog.set_level(logging.INFO, logger="ui.fields")
    capfd.readouterr()
    job = client.submit(**{**SMALL, "steps": 2, **changes}, api_name="/generate")
    list(job)
    assert job.exception() is not None
    time.sleep(0.5)  # the server logs as it answers; the client may have the answer first
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    refused = [r.getMessage() for r in caplog.records if r.name == "ui.fields"]
    assert len(refused) == 1 and refused[0].startswith("refused: ") and "\n" not in refused[0], refused


def test_two_concurrent_clients_get_their_own_seeds(server):
    from gradio_client import Client

    url, _ = server
    results = {}

    def one(seed):
        c = Client(url, download_files=False, verbose=False)
        job = c.submit(**SMALL, steps=3, seed=seed, num_seeds=2, api_name="/generate")
        results[seed] = (job, list(job))

    threads = [threading.Thread(target=one, args=(seed,)) for seed in (100, 200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for seed in (100, 200):
        job, outputs = results[seed]
        assert job.exception() is None
        assert captions(outputs[-1][0]) == [f"seed {seed}", f"seed {seed + 1}"]
        assert [read_settings(i["path"])[1] for i in outputs[-1][4]] == [seed, seed + 1]


def test_presets_fill_the_controls(client):
    from pipeline.presets import load_presets

    presets = load_presets()
    values = client.predict(1, api_name="/load_preset")
    assert values[0] == presets[1].request.prompt
    assert values[2] == presets[1].request.mode


def test_png_restores_its_settings(client, tmp_path):
    request = GenerationRequest(prompt="astronaut in a jungle", prompt_2="Van Gogh painting", mode="reversed",
                                guidance_scale=3.0, steps=12, seeds=(7, 8), width=64, height=128, scheduler="ddim", eta=0.5)
    path = save_png(Image.new("RGB", (64, 128)), tmp_path / "x.png", request, seed=7)
    values = client.predict(handle_file(str(path)), api_name="/restore_from_png")
    from ui.controls import CONTROL_NAMES

    restored = dict(zip(CONTROL_NAMES, values))
    assert restored["prompt_2"] == "Van Gogh painting" and restored["mode"] == "reversed"
    assert restored["steps"] == 12 and restored["seed"] == 7 and restored["num_seeds"] == 2 and restored["eta"] == 0.5


def test_a_plain_png_is_refused_clearly(client, tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    # gradio_client raises AppError for a gr.Error the handler raised, carrying its message
    with pytest.raises(AppError, match="(?i)settings"):
        client.predict(handle_file(str(path)), api_name="/restore_from_png")


def test_share_link_round_trip(client):
    from ui.controls import CONTROL_NAMES, settings_from_query
    from urllib.parse import parse_qsl, urlsplit

    link = client.predict(**SMALL, steps=9, seed=3, mode="reversed", api_name="/share_link")
    settings, problems = settings_from_query(dict(parse_qsl(urlsplit(link).query, keep_blank_values=True)))
    assert problems == []
    assert settings["steps"] == 9 and settings["seed"] == 3 and settings["mode"] == "reversed"
    assert set(settings) == set(CONTROL_NAMES) - {"prompt_adherence"}  # the toy model's alone: not on this page


def test_token_warning(client):
    assert client.predict("an otter", "", "", "", "cfg", api_name="/count_tokens") == ""
    warning = client.predict("otter " * 30, "", "", "", "cfg", api_name="/count_tokens")
    assert "Prompt" in warning and "77" in warning


@pytest.mark.parametrize("changes, shown", [
    (dict(steps=1), "step 1/1"),
    (dict(steps=3, preview_every=3), "step 3/3"),
    (dict(steps=4, strength=0.0), "step 0/0"),  # img2img at strength 0: the VAE round trip, no denoising step
    (dict(steps=4, strength=0.3), "step 1/1"),  # img2img leaving one denoising step
])
def test_a_run_with_a_single_preview_frame_delivers_its_images(client, tmp_path, changes, shown):
    """Such a run once ended with "Slider minimum must be less than maximum." and never sent its images."""
    extra = {}
    if "strength" in changes:
        path = tmp_path / "start.png"
        Image.new("RGB", (64, 64), (200, 40, 40)).save(path)
        extra["init_image"] = handle_file(str(path))
    job = client.submit(**{**SMALL, "num_seeds": 2, **changes}, **extra, api_name="/generate")
    outputs = list(job)
    assert job.exception() is None, job.exception()
    final = outputs[-1]
    assert "Done" in final[1] and shown in final[1], final[1]
    assert len(final[4]) == 2 and all(item["path"].endswith(".png") for item in final[4])
    assert final[2]["visible"] is False  # one frame: nothing to revisit, so no step slider


def test_whatif_and_fork_over_the_api_keep_to_the_clients_session(client):
    """An API client's session holds its run's cache: /whatif answers from it, /fork continues it."""
    run(client, steps=4, num_seeds=1, seed=3)
    gallery, summary = client.predict(step=2, scale=3.0, mode="cfg", decoder="linear", api_name="/whatif")
    assert len(gallery) == 2 and captions(gallery)[0] == "seed 3 · s 3 · step 2"
    assert captions(gallery)[1].startswith("seed 3 · Δ")
    assert "Step 2: Standard CFG, scale 3" in summary
    forked = list(client.submit(step=2, scale=3.0, mode="cfg", decoder="linear", every=1, source="pred_x0",
                                api_name="/fork"))
    assert "Continuing from step 2/4" in forked[0][1] and forked[-1][1].startswith("**Done: step 4/4**")
    request, seed = read_settings(forked[-1][4][0]["path"])
    assert seed == 3 and [p.to_dict() for p in request.forks] == [{"step": 2, "changes": {"guidance_scale": 3.0}}]


def test_fork_without_a_run_says_so(server):
    from gradio_client import Client

    fresh = Client(server[0], download_files=False, verbose=False)  # a session that has run nothing
    outputs = list(fresh.submit(step=2, scale=3.0, mode="cfg", decoder="linear", every=1, source="pred_x0",
                                api_name="/fork"))
    assert "Nothing to continue" in outputs[-1][1]
