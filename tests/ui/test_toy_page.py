"""The Explore tab in the toy world: the toy model's adherence control, its own words everywhere, and where each
seed landed (a data item, or not, and why). A real (tiny) model's page has no adherence control."""

from __future__ import annotations

import re
from types import SimpleNamespace
from urllib.parse import parse_qsl, urlsplit

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from pipeline import GenerationRequest
from pipeline.metadata import read_settings, save_png
from pipeline.models import ToyPreviewDecoder
from pipeline.models.toy import WORDS
from pipeline.presets import load_presets
from ui import Handlers, build_demo, render
from ui.controls import BY_LABEL, CONTROL_NAMES, CONTROLS, TEXT
from ui.explore import Explore

from .conftest import free_port

ADHERENCE = CONTROLS["prompt_adherence"].label
SDXL_WORDS = {"otter", "watercolor", "painting", "solar", "planets", "water", "astronaut", "jungle"}


@pytest.fixture(scope="module")
def toy_app(toy_pipe, tmp_path_factory):
    handlers = Handlers(toy_pipe, taesd=ToyPreviewDecoder(toy_pipe.vae), model_name="toy", presets=load_presets(),
                        output_dir=tmp_path_factory.mktemp("toy-outputs"))
    demo = build_demo(handlers, banner=render.banner("toy", None), default_size=256)
    demo.queue()
    demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    try:
        yield demo, Explore(handlers, default_size=256)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def toy_client(toy_app):
    from gradio_client import Client

    return Client(toy_app[0].local_url, download_files=False, verbose=False)


def page_values(demo) -> dict:
    """The Explore controls as the page starts, read from its components (by label)."""
    values = {}
    for block in demo.blocks.values():
        name = BY_LABEL.get(getattr(block, "label", None) or "")
        if name in CONTROLS and name not in values:
            values[name] = block.value
    return values


def final(client, **settings):
    job = client.submit(**settings, api_name="/generate")
    outputs = list(job)
    assert job.exception() is None, job.exception()
    return outputs[-1]


def unknown_words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower())) & SDXL_WORDS


def test_the_adherence_control_reaches_the_run_changes_the_image_and_is_recorded(toy_client):
    """Conditional only on "red circle", seed 2: the perfect model (1) gives a red circle, the default (0.5) ignores
    the prompt on this seed (a big yellow triangle)."""
    runs = {}
    for adherence in (1.0, 0.5):
        out = final(toy_client, prompt="red circle", mode="cond_only", seed=2, num_seeds=1, steps=20,
                    prompt_adherence=adherence)
        path = out[4][0]["path"]
        assert read_settings(path)[0].prompt_adherence == adherence  # the PNG's settings record it
        runs[adherence] = np.asarray(Image.open(path).convert("RGB"), dtype=float)
        assert "**Data items:** seed 2: " in out[1]
    assert np.abs(runs[1.0] - runs[0.5]).mean() > 5  # a different picture, not a rounding difference
    assert "small red circle" in final(toy_client, prompt="red circle", mode="cond_only", seed=2, num_seeds=1,
                                       steps=20, prompt_adherence=1.0)[1]


def test_the_adherence_control_refuses_out_of_range_by_its_label(toy_client):
    job = toy_client.submit(prompt="red circle", steps=2, prompt_adherence=1.5, api_name="/generate")
    list(job)
    assert ADHERENCE in str(job.exception()) and "from 0 to 1" in str(job.exception())


def test_a_real_models_page_has_no_adherence_control(app_server, client):
    demo, _ = app_server
    assert ADHERENCE not in {getattr(block, "label", None) for block in demo.blocks.values()}
    parameters = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]["parameters"]
    assert "prompt_adherence" not in {p["parameter_name"] for p in parameters}
    out = final(client, prompt="an otter", width=64, height=64, steps=2, num_seeds=1, preview="linear")
    assert read_settings(out[4][0]["path"])[0].prompt_adherence is None  # the request left it unset
    assert "Data items" not in out[1]


def test_the_toy_page_starts_in_the_toys_words(toy_app):
    demo, explore = toy_app
    values = page_values(demo)
    assert values["prompt_adherence"] == 0.5  # the model's own default
    for name, control in CONTROLS.items():
        if control.kind == TEXT and values.get(name):
            assert set(values[name].split()) <= set(WORDS), f"{control.label} starts as {values[name]!r}"
    link = explore.share_link(*(values.get(name) for name in CONTROL_NAMES))
    texts = [v for k, v in parse_qsl(urlsplit(link).query) if CONTROLS[k].kind == TEXT]
    assert texts and not unknown_words(" ".join(texts)), link
    assert "prompt_adherence=0.5" in link


def test_preset_names_and_changed_notes_speak_the_toys_words(toy_app):
    demo, explore = toy_app
    names = next(b for b in demo.blocks.values() if isinstance(b, gr.Dataset) and b.elem_id == "presets").samples
    assert ["Perp-Neg: red, without the squares"] in names
    before = page_values(demo)
    for index, preset in enumerate(explore.presets):
        result = explore.load_preset(index, before)
        settings = dict(zip(CONTROL_NAMES, result))
        note, changed = result[len(CONTROL_NAMES):len(CONTROL_NAMES) + 2]
        assert not unknown_words(f"{names[index][0]} {note} {changed}"), (preset.path.name, note, changed)
        own = preset.for_model(toy=True)[0].prompt_adherence
        assert settings["prompt_adherence"] == (0.5 if own is None else own)  # the preset's, or the model's default


def test_an_image_off_the_data_is_said_so_and_why(toy_app):
    """At adherence 1 the "blue" baseline can only pick blue items and the prompt only circles: at the last steps
    x0_u + 7.5 (x0_c - x0_u) lands far beyond both, a fused, saturated shape."""
    _, explore = toy_app
    values = {**page_values(toy_app[0]), "prompt": "circle", "negative_prompt": "blue", "mode": "negative_direction",
              "num_seeds": 1, "prompt_adherence": 1.0}
    *_, last = explore.generate(*(values[name] for name in CONTROL_NAMES))
    status, gallery = last[1], last[0]
    assert re.search(r"\*\*seed 1: not a data item \(distance 1\d\d to the nearest, big yellow circle, "
                     r"top right\)\*\*: guidance extrapolated past the data", status), status
    assert "(Within 0.84 of an item, half the smallest distance between two items" in status
    assert [caption for _, caption in gallery] == ["seed 1 · not a data item"]
    values["prompt_adherence"] = 0.5  # the default model's baseline can pick any item: both land on one
    *_, last = explore.generate(*(values[name] for name in CONTROL_NAMES))
    assert "**Data items:** seed 1: big yellow circle, top right." in last[1] and "not a data item" not in last[1]


def test_adherence_from_pngs_and_links_fits_the_model(toy_app, tiny_pipe, tmp_path):
    _, toy = toy_app
    tiny = Explore(Handlers(tiny_pipe, model_name="tiny", presets=load_presets()), default_size=64)
    made = GenerationRequest(prompt="red circle", seeds=(1,), width=64, height=64, prompt_adherence=1.0)
    unset = GenerationRequest(prompt="red circle", seeds=(1,), width=64, height=64)
    for_toy = dict(zip(CONTROL_NAMES, toy.restore_from_png(str(save_png(Image.new("RGB", (64, 64)),
                                                                        tmp_path / "a.png", unset, 1)))))
    assert for_toy["prompt_adherence"] == 0.5  # made at the model's default, shown as its number
    result = tiny.restore_from_png(str(save_png(Image.new("RGB", (64, 64)), tmp_path / "b.png", made, 1)))
    assert isinstance(dict(zip(CONTROL_NAMES, result))["prompt_adherence"], type(gr.skip()))
    assert f"Left out {ADHERENCE} (1): only the toy world's model has it." in result[len(CONTROL_NAMES)]
    warnings = []
    link = SimpleNamespace(query_params={"prompt": "red circle", "prompt_adherence": "0.25"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gr, "Warning", warnings.append)
        assert dict(zip(CONTROL_NAMES, toy.restore_from_query(link)))["prompt_adherence"] == 0.25
        assert isinstance(dict(zip(CONTROL_NAMES, tiny.restore_from_query(link)))["prompt_adherence"], type(gr.skip()))
    assert warnings == [f"Link: Left out {ADHERENCE} (0.25): only the toy world's model has it."]


def test_img2img_says_the_toy_snaps_and_offers_a_data_item(toy_client):
    note = toy_client.predict(None, 0.75, 30, api_name="/describe_strength")
    assert "The toy world snaps to its data" in note
    start = toy_client.predict(256, 256, api_name="/start_item")
    image = Image.open(start["path"] if isinstance(start, dict) else start).convert("RGB")
    assert image.size == (256, 256) and image.getpixel((85, 85)) == (40, 90, 225)  # the big blue square, top left


def test_pag_and_seg_are_greyed_out_in_the_toy_with_the_reason(toy_app, toy_client):
    """Their variant perturbs attention layers, which the toy's exact denoiser has none of: the Guidance mode
    control says so and greys the two choices out; asked for anyway (API, link), Generate refuses by label."""
    demo, _ = toy_app
    mode = next(b for b in demo.blocks.values() if getattr(b, "label", None) == "Guidance mode")
    assert "PAG (perturbed attention) and SEG (smoothed energy)" in mode.info and "no attention layers" in mode.info
    styles = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "unavailable-modes-style"]
    assert len(styles) == 1
    for label in ("PAG (perturbed attention)", "SEG (smoothed energy)"):
        assert f'label[data-testid="{label}-radio-label"]' in styles[0].head
    assert "Autoguidance" not in styles[0].head  # the toy's weak model is the blurred-data denoiser
    job = toy_client.submit(prompt="red circle", mode="pag", steps=2, num_seeds=1, api_name="/generate")
    with pytest.raises(Exception, match="Guidance mode.*no attention layers"):
        list(job)
        raise job.exception()


def test_the_lab_does_not_offer_pag_and_seg_in_the_toy_and_says_why(toy_app):
    """The Distribution tab's mode list leaves out what the toy cannot run, with the reason on the control (a run
    with them would only be refused); autoguidance stays."""
    demo, _ = toy_app
    lab_mode = next(b for b in demo.blocks.values() if getattr(b, "label", None) == "Lab guidance mode")
    offered = [value for _, value in lab_mode.choices]
    assert "pag" not in offered and "seg" not in offered and {"cfg", "autoguidance"} <= set(offered)
    assert "PAG (perturbed attention) and SEG (smoothed energy) not offered" in lab_mode.info
    assert "no attention layers" in lab_mode.info


def test_an_autoguidance_image_off_the_data_says_why(toy_pipe):
    """Autoguidance at s = 1 is no extrapolation between ε_u and ε_c, nor too few steps: the note names the weak
    model's step (preset 13's seeds all end 1.5 latent units off their items)."""
    from pipeline import GenerationRequest
    from pipeline.models.toy import landings

    req = GenerationRequest(prompt="red circle", mode="autoguidance", guidance_scale=1.0, steps=30, seeds=(1,),
                            width=256, height=256, prompt_adherence=0.5)
    from pipeline import generate

    landed = landings(toy_pipe, list(generate(toy_pipe, req))[-1].pred_x0)
    note = render.landing_note(landed, req.seeds, req)
    assert "not a data item" in note and "step away from the weak model" in note and "too few steps" not in note
