"""The X/Y sweep and Invert tabs, driven through gradio_client against the live tiny-model server (and the
Invert tab's state path through its handler, which the API cannot reach)."""

import re
import time

import numpy as np
import pytest
import torch
from gradio_client import handle_file
from PIL import Image

from pipeline import GenerationRequest
from pipeline.inversion import invert
from pipeline.sweep import Axis, run_sweep
from tests.ui.test_app import wait_until
from ui.controls import label_of
from ui.render import shown_value

SMALL = dict(prompt="an otter", width=64, height=64)
SWEEP = dict(SMALL, steps=3, x_axis="guidance_scale", x_values="1, 4", y_axis="seed", y_values="1, 2")


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A small PNG with some structure (gradients and a square), for inversion."""
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 4, y * 4, np.full_like(x, 96)], axis=-1).astype(np.uint8)
    rgb[20:44, 20:44] = (240, 200, 40)
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(rgb).save(path)
    return path


def sweep(client, **changes):
    job = client.submit(**{**SWEEP, **changes}, api_name="/sweep")
    return job, list(job)


# --- X/Y sweep -------------------------------------------------------------------------------------------


def test_sweep_streams_progress_then_the_grid_and_captioned_cells(client, server, tiny_pipe):
    _, throttle = server
    throttle.hold()  # lockstep: the sweep takes a step only once the status of the step before has arrived
    job = client.submit(**SWEEP, api_name="/sweep")
    outputs = throttle.lockstep(job, status=0)
    assert job.exception() is None
    statuses = [out[0] for out in outputs]
    assert "Starting" in statuses[0] and "4 cells" in statuses[0]
    progress = [re.search(r"batch (\d+)/(\d+) · step (\d+)/(\d+) · cells done (\d+)/(\d+)", s) for s in statuses[1:]]
    assert all(progress), statuses
    assert [m.group(3) for m in progress[:3]] == ["1", "2", "3"] and all(m.group(6) == "4" for m in progress)
    assert "Done" in statuses[-1] and progress[-1].group(5) == "4"

    grid, cells = outputs[-1][1], outputs[-1][2]
    assert grid["path"].endswith(".png")
    assert [cell["caption"] for cell in cells] == [
        "Guidance scale 1 · Seed 1", "Guidance scale 4 · Seed 1",
        "Guidance scale 1 · Seed 2", "Guidance scale 4 · Seed 2",
    ]
    # The grid is served as the PNG it was saved as: pixel for pixel the library's grid.
    base = GenerationRequest(prompt="an otter", steps=3, seeds=(1,), width=64, height=64,
                             negative_prompt="solar system with 9 planets")
    x, y = Axis.parse("guidance_scale", "1, 4"), Axis.parse("seed", "1, 2")
    expected = list(run_sweep(tiny_pipe, base, x, y, title=label_of, shown=shown_value))[-1].grid  # the page's labels
    assert np.array_equal(pixels(grid["path"]), np.asarray(expected))


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(x_values="1, 2, 3, 4, 5, 6, 7, 8, 9", y_values="1, 2, 3, 4, 5, 6, 7, 8"), ["64 cells", "9 x 8"]),
        (dict(x_values="1, lots"), ["X values", "guidance_scale"]),
        (dict(y_values="1, -5"), ["Y values", "seeds"]),
        (dict(x_values="1, 99"), ["X values", "guidance_scale"]),
        (dict(y_axis="guidance_scale", y_values="2, 3"), ["Y axis", "differ"]),
        (dict(x_axis="steps"), ["X axis"]),
        (dict(prompt=""), ["Explore settings: Prompt: must not be empty"]),
    ],
)
def test_bad_sweeps_name_the_field_and_the_app_keeps_serving(client, changes, words):
    job, _ = sweep(client, **changes)
    error = job.exception()
    assert error is not None and all(word in str(error) for word in words), error
    job, outputs = sweep(client, steps=1, x_values="2", y_values="1")
    assert job.exception() is None and "Done" in outputs[-1][0]


def test_stop_sweep_ends_a_slow_sweep_and_says_where(client, server):
    _, throttle = server
    throttle.hold()
    start = throttle.calls
    job = client.submit(**{**SWEEP, "steps": 100}, api_name="/sweep")
    throttle.allow(2)
    wait_until(lambda: len(job.outputs()) >= 3, what="two steps")  # "Starting", steps 1 and 2
    client.predict(job.outputs()[0][3], api_name="/stop_sweep")  # the run id from the stream's first update
    throttle.release()  # the third step's call, waiting at the gate, may now finish; the stop ends the sweep there
    wait_until(job.done, what="the sweep to end after Stop sweep")
    assert job.exception() is None, job.exception()
    last = job.outputs()[-1][0]
    assert last.startswith("**Stopped**") and "/100" in last and "cells done 0/4" in last, last
    # the sweep runs in the job's own generator: once its stream has ended, no UNet call may follow
    calls = throttle.calls
    assert calls - start <= 3, f"{calls - start} UNet calls for a sweep stopped during its third step"
    time.sleep(0.5)
    assert throttle.calls == calls, "the UNet kept running after Stop sweep"


# --- Invert ----------------------------------------------------------------------------------------------


def test_invert_shows_noise_reconstruction_and_error(client, photo):
    job = client.submit(image=handle_file(str(photo)), prompt="a yellow square", steps=4, guidance_scale=1,
                        api_name="/invert")
    outputs = list(job)
    assert job.exception() is None
    noise, reconstruction, result = outputs[-1]
    assert "Inverting" in outputs[0][2]
    assert pixels(noise["path"]).shape == (64, 64, 3)  # one 8x8 block per latent of the 64 px image
    assert pixels(reconstruction["path"]).shape == (64, 64, 3)
    assert re.search(r"PSNR -?\d+\.\d+ dB", result) and "latent MSE" in result
    assert "random VAE" in result or "tiny random model" in result


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(image=None), ["Image to invert"]),
        (dict(steps=0), ["Inversion steps"]),
        (dict(steps=201), ["Inversion steps"]),
        (dict(guidance_scale=25), ["Inversion guidance scale"]),
        (dict(prompt=""), ["Inversion prompt"]),
    ],
)
def test_bad_inversions_name_the_field(client, photo, changes, words):
    inputs = dict(image=handle_file(str(photo)), prompt="a yellow square", steps=2, guidance_scale=1)
    job = client.submit(**{**inputs, **changes}, api_name="/invert")
    list(job)
    error = job.exception()
    assert error is not None and all(word in str(error) for word in words), error


def test_error_curve_streams_one_row_per_steps_and_scale(client, photo):
    job = client.submit(image=handle_file(str(photo)), prompt="a yellow square", guidance_scale=1,
                        curve_steps="4, 2", api_name="/error_curve")
    outputs = list(job)
    assert job.exception() is None
    tables = [out[1]["data"] for out in outputs]
    assert [len(t) for t in tables] == [0, 1, 2, 3, 4]  # rows stream as they finish
    assert [(row[0], row[1]) for row in tables[-1]] == [(2, 1.0), (4, 1.0), (2, 7.5), (4, 7.5)]
    plot = outputs[-1][0]
    column = {name: plot["columns"].index(name) for name in ("steps", "PSNR", "guidance")}
    assert sorted((row[column["guidance"]], row[column["steps"]]) for row in plot["data"]) == [
        ("s = 1", 2), ("s = 1", 4), ("s = 7.5", 2), ("s = 7.5", 4)]
    assert all(row[column["PSNR"]] is not None for row in plot["data"])
    assert "done" in outputs[-1][2]

    job = client.submit(image=handle_file(str(photo)), prompt="a yellow square", guidance_scale=1,
                        curve_steps="2, 0", api_name="/error_curve")
    list(job)
    assert "Curve steps" in str(job.exception())


def test_inverted_noise_goes_to_explore_and_generates_the_reconstruction(client, photo):
    job = client.submit(image=handle_file(str(photo)), prompt="a yellow square", steps=4, guidance_scale=3,
                        api_name="/invert")
    reconstruction = list(job)[-1][1]
    assert job.exception() is None

    from ui.invert_tab import NOISE_TARGETS

    settings = dict(zip(NOISE_TARGETS, client.predict(api_name="/use_inverted_noise")))
    assert settings["scheduler"] == "ddim" and settings["eta"] == 0
    assert (settings["mode"], settings["guidance_scale"], settings["steps"]) == ("cfg", 3, 4)
    assert (settings["width"], settings["height"], settings["num_seeds"]) == (64, 64, 1)
    assert settings["prompt"] == "a yellow square" and settings["prompt_2"] == ""
    assert "inverted noise of 64x64" in settings["start_note"]

    # The session's starting latents are now the inverted noise: Generate with these settings (any seed)
    # runs DDIM from it and lands on the Invert tab's reconstruction.
    controls = {k: settings[k] for k in ("prompt", "prompt_2", "mode", "guidance_scale", "steps", "scheduler", "eta",
                                         "num_seeds", "width", "height")}
    job = client.submit(**controls, seed=12345, preview="linear", api_name="/generate")
    final = list(job)[-1]
    assert job.exception() is None
    assert np.array_equal(pixels(final[4][0]["path"]), pixels(reconstruction["path"]))


def test_use_noise_handler_sets_the_start_latents(tiny_pipe):
    import gradio as gr

    from ui import Handlers
    from ui.invert_tab import NOISE_TARGETS, Inversions

    inversions = Inversions(Handlers(tiny_pipe, model_name="tiny"))
    image = Image.new("RGB", (96, 64), (200, 80, 40))
    inversion = invert(tiny_pipe, image, "an orange card", 2, 1.0)
    latents, *values = inversions.use_noise(inversion)
    assert latents is inversion.noise and tuple(latents.shape) == (1, 4, 8, 12)
    settings = dict(zip(NOISE_TARGETS, values))
    assert settings["mode"] == "cond_only" and (settings["width"], settings["height"]) == (96, 64)
    assert settings["init_image"] is None and settings["clear_start"]["visible"] is True
    with pytest.raises(gr.Error, match="invert an image first"):
        inversions.use_noise(None)
    assert torch.isfinite(latents).all()
