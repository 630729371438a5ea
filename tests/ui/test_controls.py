"""Reading controls strictly: what the page, API clients and links send is refused, never rounded or clamped,
and every refusal names the control by its label. No server needed: these are the readers themselves."""

import math
from urllib.parse import parse_qsl

import gradio as gr
import pytest

from pipeline import GenerationRequest, RequestError
from ui.controls import (
    CONTROL_NAMES,
    CONTROLS,
    MAX_LINK_CHARS,
    PASSED_THROUGH,
    label_of,
    query_from_settings,
    read,
    request_from_settings,
    settings_from_query,
    settings_from_request,
    shown_value,
)
from ui.handlers import gr_error

BASE = dict(prompt="an otter", mode="cfg", guidance_scale=7.5, steps=4, seed=1, num_seeds=2, scheduler="euler",
            width=64, height=64)


def test_every_control_has_a_label_and_the_order_is_the_apis():
    assert CONTROL_NAMES == tuple(CONTROLS)
    assert len({c.label for c in CONTROLS.values()}) == len(CONTROLS)  # labels find controls: they must be unique


@pytest.mark.parametrize("name, value, expected", [
    ("steps", 30.0, 30),  # a slider's integral float is the whole number it shows
    ("steps", 30, 30),
    ("guidance_scale", 7, 7.0),
    ("decompose", False, False),
    ("mode", "reversed", "reversed"),
    ("prompt", "", ""),
])
def test_valid_values_are_read_as_their_control_takes_them(name, value, expected):
    result = read(name, value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("name, value, words", [
    ("steps", 2.7, "a whole number from 1 to 200, got 2.7: a fraction is not rounded"),
    ("steps", 0, "a whole number from 1 to 200, got 0"),
    ("steps", True, "got True"),
    ("steps", "30", "got '30'"),
    ("width", 5000, "from 64 to 2048, got 5000"),
    ("guidance_scale", 75.0, "a number from 0 to 50, got 75.0"),
    ("guidance_scale", math.nan, "got nan"),
    ("guidance_scale", math.inf, "got inf"),
    ("seed", -5, "from 0 to 4294967295, got -5"),
    ("seed", 2**64, "got 18446744073709551616"),
    ("decompose", "false", "must be true or false, got 'false'"),
    ("decompose", 1, "must be true or false, got 1"),
    ("mode", "bogus", "must be one of cfg, reversed"),
    ("prompt", ["a", "b"], "must be text, got list"),
    ("prompt", "\ud800", "lone surrogate"),
    ("prompt", "x" * 10_001, "at most 10,000 characters, got 10,001"),
])
def test_bad_values_are_refused_naming_the_control(name, value, words):
    with pytest.raises(RequestError) as info:
        read(name, value)
    assert info.value.field == name and words in info.value.detail
    assert len(str(info.value)) < 300  # never an echo of hostile input


def test_long_hostile_values_are_not_echoed():
    with pytest.raises(RequestError) as info:
        read("mode", "x" * 100_000)
    # the allowed list grows with the modes (13 names, 150 characters); the hostile value must stay cut short
    assert len(info.value.detail) < 300 and "x" * 100 not in info.value.detail


def test_request_from_settings_is_strict_and_names_labels():
    assert request_from_settings(BASE) == GenerationRequest(prompt="an otter", steps=4, seeds=(1, 2), width=64,
                                                            height=64)
    for changes, label in [(dict(steps=2.7), "Steps"), (dict(num_seeds=1.5), "Number of seeds"),
                           (dict(width=64.5), "Width"), (dict(seed=None), "Seed"),
                           (dict(decompose="false"), "Decomposition view"),
                           (dict(seed=2**32 - 1, num_seeds=2), "Seed")]:
        with pytest.raises(RequestError) as info:
            request_from_settings({**BASE, **changes})
        assert label_of(info.value.field) == label, (changes, info.value)


def test_every_control_named_like_a_request_field_reaches_the_request():
    """Issue 18: a hand-written list of forwarded controls left out perp_neg_scale, so its slider did nothing.
    Every mode's parameter (and every other control named like a request field) must arrive."""
    from pipeline.guidance import MODE_PARAMS

    for name, param in MODE_PARAMS.items():
        lo, hi = param.range
        value = param.default + 1 if param.integer else (lo + hi) / 2  # some value other than the default
        if param.length:  # a tuple Param's control: text, "15, 15"
            value = (value,) * param.length
        assert value != param.default, name
        request = request_from_settings({**BASE, name: shown_value(name, value)})
        assert getattr(request, name) == value, name
    fields = set(GenerationRequest.__dataclass_fields__)
    assert {n for n in CONTROL_NAMES if n in fields} <= set(PASSED_THROUGH) | {
        "prompt", "mode", "guidance_scale", "steps", "width", "height", "scheduler", "decompose_seed"}


def test_decomposition_seed_must_be_one_of_the_runs_seeds():
    request = request_from_settings({**BASE, "seed": 50, "decompose": True, "decompose_seed": 51})
    assert request.decompose_seed == 51
    with pytest.raises(RequestError, match="one of this run's seeds, 50 to 51") as info:
        request_from_settings({**BASE, "seed": 50, "decompose": True, "decompose_seed": 1})
    assert label_of(info.value.field) == "Decomposition seed"


def test_gr_error_names_the_label_not_the_field():
    error = gr_error(RequestError("width", "must be a multiple of 8 from 64 to 2048, got 100"))
    assert error.message == "Width: must be a multiple of 8 from 64 to 2048, got 100"
    assert gr_error(RequestError("steps", "x"), {"steps": "Inversion steps"}).message == "Inversion steps: x"
    assert gr_error(RuntimeError("boom")).title == "Generation failed"


def test_a_link_round_trips_and_refuses_what_its_controls_would():
    settings = {**BASE, "decompose": True, "decompose_seed": 2, "eta": 0.5}
    back, problems = settings_from_query(dict(parse_qsl(query_from_settings(settings))))
    assert problems == [] and back == settings
    back, problems = settings_from_query({"mode": "bogus", "steps": "2.7", "seed": "x", "decompose": "maybe",
                                          "prompt": "p" * 5000, "width": "128"})
    assert back == {"width": 128}  # the one usable value; the control keeps its value for the others
    assert [p.split(":")[0] for p in problems] == ["Prompt", "Guidance mode", "Steps", "Seed", "Decomposition view"]
    assert "links carry at most 2,000" in problems[0]


def test_share_link_is_capped():
    from ui import Handlers
    from ui.explore import Explore
    from pipeline import tiny_pipeline

    handlers = Explore(Handlers(tiny_pipeline()))
    values = [BASE.get(name) for name in CONTROL_NAMES]
    assert len(handlers.share_link(*values)) < MAX_LINK_CHARS
    long_prompt = dict(BASE, prompt="an otter " * 1000, prompt_2="a watercolor " * 700)
    with pytest.raises(Exception) as info:
        handlers.share_link(*[long_prompt.get(name) for name in CONTROL_NAMES])
    assert isinstance(info.value, gr.Error) and "at most 8,000" in str(info.value)


@pytest.mark.parametrize("text, expected", [("10, 5", (10.0, 5.0)), ("7.5,2", (7.5, 2.0)), (" 0 , 30 ", (0.0, 30.0))])
def test_a_tuple_param_reads_its_text_field(text, expected):
    assert read("fdg_scales", text) == expected
    assert read("fdg_scales", list(expected)) == expected  # the API's JSON list


@pytest.mark.parametrize("text", ["10", "10, 5, 1", "10; 5", "10,,5", "ten, 5", "10, 31", "nan, 5", "", [10, True]])
def test_a_tuple_param_refuses_anything_else_naming_its_label(text):
    with pytest.raises(RequestError) as info:
        read("fdg_scales", text)
    assert label_of(info.value.field) == "FDG scales (fine, coarse)"
    assert "2 numbers separated by commas, each from 0 to 30" in info.value.detail


def test_a_tuple_param_round_trips_through_the_page_and_a_link():
    request = request_from_settings({**BASE, "mode": "fdg", "fdg_scales": "7.5, 2"})
    settings = settings_from_request(request)
    assert settings["fdg_scales"] == "7.5, 2"  # the page's text field shows it as typed
    values, problems = settings_from_query(dict(parse_qsl(query_from_settings({"fdg_scales": settings["fdg_scales"]}))))
    assert not problems and values["fdg_scales"] == (7.5, 2.0)
    assert request_from_settings({**BASE, "mode": "fdg", **values}) == request


def test_an_upload_pruned_from_the_cache_is_named_and_says_to_upload_again(tmp_path):
    """The server's cache keeps only the newest files (ui/storage.py); an upload pruned before its use is refused
    naming its control, saying what happened, not 'is not an image this app can read (FileNotFoundError)'."""
    from gradio.data_classes import ImageData

    from ui.fields import FieldImage, Refused

    with gr.Blocks():
        image = FieldImage(label="Image to invert", type="filepath", image_mode=None)
    with pytest.raises((Refused, gr.Error)) as raised:
        image.preprocess(ImageData(path=str(tmp_path / "gone.png"), orig_name="gone.png"))
    message = str(raised.value)
    assert "Image to invert" in message and "upload it again" in message, message
