"""The guidance lab and img2img through the app's API: decomposition, schedule curve, weighted prompts."""

import numpy as np
import torch
from gradio_client import handle_file
from PIL import Image, ImageChops

from pipeline import GenerationRequest, denoise
from pipeline.decompose import spread
from pipeline.previews import make_preview_decoder


# gradio_client leaves State outputs out: a generate update is (gallery, status, step slider, norm plot,
# downloads, decomposition).
SMALL = dict(prompt="an otter", width=64, height=64, preview="linear", steps=4, num_seeds=2, seed=3)


def run(client, **kwargs):
    job = client.submit(**{**SMALL, **kwargs}, api_name="/generate")
    outputs = list(job)
    assert job.exception() is None, job.exception()
    return outputs


def expected_panels(tiny_pipe, seed: int) -> list[np.ndarray]:
    """The decomposition of `seed` from the library at the step a finished run opens it (where its parts differ
    most, `pipeline.decompose.spread`), through the same linear decoder, and the difference image the UI draws
    (guided - unconditional, mid-grey where they agree)."""
    request = GenerationRequest(prompt="an otter", steps=4, seeds=(3, 4), width=64, height=64, decompose_seed=seed,
                                negative_prompt="solar system with 9 planets")
    parts = max((event.decomposition for event in denoise(tiny_pipe, request)), key=spread)
    uncond, cond, guided = make_preview_decoder("linear", tiny_pipe)(torch.cat([parts.uncond, parts.cond, parts.guided]))
    difference = ImageChops.subtract(guided, uncond, scale=2.0, offset=128)
    return [np.asarray(image, dtype=np.int16) for image in (uncond, cond, guided, difference)]


def served(item) -> np.ndarray:
    image = item["image"] if "image" in item else item
    return np.asarray(Image.open(image["path"]).convert("RGB"), dtype=np.int16)


def test_decomposition_streams_four_panels_for_the_chosen_seed(client, tiny_pipe):
    outputs = run(client, decompose=True, decompose_seed=4)
    panels = [out[5] for out in outputs if isinstance(out[5], list) and out[5]]
    assert panels, "no decomposition was streamed"
    assert [p["caption"] for p in panels[-1]] == [
        "unconditional x̂₀", "conditional x̂₀", "guided x̂₀", "guided − unconditional"]
    # The panels are the chosen seed's: each within JPEG error of the library's own decomposition of seed 4
    # through the same decoder at the step the run opens it (measured mean |served - library| 4.1/255 for the
    # x̂₀ panels, 2.0/255 for the difference, which has content at that early step), and the x̂₀ panels far
    # from seed 3's (measured 88/255).
    right, wrong = expected_panels(tiny_pipe, 4), expected_panels(tiny_pipe, 3)
    got = [served(item) for item in panels[-1]]
    errors = [np.abs(image - want).mean() for image, want in zip(got, right)]
    assert max(errors) < 8, errors
    assert all(np.abs(image - other).mean() > 40 for image, other in zip(got[:3], wrong[:3]))


def test_decomposition_seed_must_be_one_of_the_seeds(client):
    job = client.submit(**SMALL, decompose=True, decompose_seed=99, api_name="/generate")
    list(job)
    assert "Decomposition seed: must be one of this run's seeds" in str(job.exception())


def test_no_decomposition_when_off(client):
    outputs = run(client)
    assert all(out[5] in ([], None) or not isinstance(out[5], list) for out in outputs[1:])


def test_schedule_curve_and_passes_saved(client):
    plot, passes = client.predict(**{**SMALL, "steps": 10, "interval_start": 0.0, "interval_stop": 0.5},
                                  api_name="/describe_schedule")
    scales = [row[1] for row in plot["data"]]
    assert scales == [7.5] * 5 + [1.0] * 5
    assert "**15**" in passes and "5 fewer" in passes  # 5 steps x 2 passes + 5 x 1
    plot, _ = client.predict(**{**SMALL, "steps": 5, "guidance_schedule": "linear"}, api_name="/describe_schedule")
    assert [row[1] for row in plot["data"]] == [7.5, 5.875, 4.25, 2.625, 1.0]


def test_weighted_prompts_run_and_show_the_baseline_weight(client):
    outputs = run(client, mode="weighted", weighted_prompt_1="an otter", weight_1=3.0, weighted_prompt_2="a river",
                  weight_2=1.5)
    assert "Done" in outputs[-1][1]
    line = client.predict(3.0, 1.5, 0.0, 0.0, api_name="/describe_weights")
    assert "-3.5" in line


def test_img2img_through_the_api(client, tmp_path):
    path = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    job = client.submit(**{**SMALL, "steps": 6, "strength": 0.5}, init_image=handle_file(str(path)), api_name="/generate")
    outputs = list(job)
    assert job.exception() is None, job.exception()
    assert "from the image: the last 3 of 6 steps" in outputs[0][1]  # counted as the status counts them
    steps = [out[1] for out in outputs if "step " in out[1] and "Denoising" in out[1] or "Done" in out[1]]
    assert steps[-1].startswith("**Done: step 3/3")  # strength 0.5 of 6 steps: 3 denoising steps
    info = client.predict(handle_file(str(path)), 0.0, 6, api_name="/describe_strength")
    assert "no denoising" in info


def test_each_mode_shows_the_formula_of_its_table_entry(client):
    from pipeline import GUIDANCE_MODES

    for name in ("perp_neg", "negative_direction", "apg"):  # the formula first, then the controls' updates
        assert client.predict(name, api_name="/describe_mode")[0] == GUIDANCE_MODES[name].formula
    assert "perpendicular" in GUIDANCE_MODES["perp_neg"].formula


def test_perp_neg_runs_with_its_negative_scale(client):
    outputs = run(client, mode="perp_neg", negative_prompt="a planet", perp_neg_scale=3.0)
    assert "Done" in outputs[-1][1]
    job = client.submit(**SMALL, mode="perp_neg", negative_prompt="a planet", perp_neg_scale=99.0, api_name="/generate")
    list(job)
    assert "Perp-Neg negative scale" in str(job.exception())


# A value per mode parameter that visibly changes the tiny model's image at SMALL's settings (its guidance
# differences have norms below 1, so APG's cap must be lower than that to bite). A new parameter in the table of
# modes fails the coverage check below until it gets one.
# The settings each mode's parameters are changed from: APG mix's default start step (5) is past SMALL's steps,
# where its other parameters have no step to act on.
BASE = {"apg_mix": dict(apg_mix_start_step=0)}
CHANGED = dict(perp_neg_scale=3.0, apg_eta=1.0, apg_momentum=0.5, apg_norm_threshold=0.5, zero_init_steps=2,
               mag_alpha=0.05, apg_mix_start_step=2, apg_mix_eta=1.0, apg_mix_momentum=0.5, apg_mix_norm_threshold=0.05,
               fdg_scales="12, 3", pag_scale=6.0, pag_layers="1, 0, 1", seg_scale=6.0, seg_blur_sigma=1.5,
               auto_scale=4.0)
ARRIVES = {"fdg_scales": (12.0, 3.0), "pag_layers": (1.0, 0.0, 1.0)}  # what a text control's value becomes in the request, where it differs


def test_every_mode_parameter_reaches_the_run_through_the_api(client):
    """Issue 18: the Perp-Neg negative scale never left the page (always 6.5). Each mode's every parameter, sent
    through the API, must arrive in the request (the PNG's settings) and change the image."""
    from pipeline.guidance import GUIDANCE_MODES, MODE_PARAMS
    from pipeline.metadata import read_settings

    assert set(CHANGED) == set(MODE_PARAMS)
    for mode in GUIDANCE_MODES.values():
        if not mode.params:
            continue
        common = dict(mode=mode.name, negative_prompt="a planet", num_seeds=1, **BASE.get(mode.name, {}))
        baseline = run(client, **common)[-1][4][0]["path"]
        for param in mode.params:
            assert CHANGED[param.name] != common.get(param.name, param.default)
            path = run(client, **{**common, param.name: CHANGED[param.name]})[-1][4][0]["path"]
            request, _ = read_settings(path)
            assert getattr(request, param.name) == ARRIVES.get(param.name, CHANGED[param.name]), param.name
            assert not np.array_equal(served({"path": path}), served({"path": baseline})), param.name
