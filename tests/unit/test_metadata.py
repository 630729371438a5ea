"""PNG text chunks: A1111's `parameters` layout, and our JSON chunk read back through request validation."""

import json

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipeline import SCHEDULERS, GenerationRequest, RequestError
from pipeline.guidance import GUIDANCE_MODES
from pipeline.metadata import (
    PARAMETERS_KEY,
    SAMPLER_NAMES,
    SETTINGS_KEY,
    a1111_key,
    parameters_text,
    read_settings,
    save_png,
    settings_json,
)

OTTER = "a watercolor painting of an otter"

REQUESTS = {
    "cfg": GenerationRequest(prompt=OTTER, seeds=(1, 2, 3)),
    "negative_direction": GenerationRequest(
        prompt="une loutre à l'aquarelle ☕", negative_prompt="solar system with 9 planets",
        negative_prompt_2="stars", mode="negative_direction", guidance_scale=5.0, steps=25, seeds=(7,),
        width=832, height=1216,
    ),
    "ddim_reversed": GenerationRequest(
        prompt="astronaut in a jungle, cold color palette\nsecond line", prompt_2="Van Gogh: painting, oil",
        mode="reversed", scheduler="ddim", eta=0.5, uncond="empty", seeds=(0, 2**32 - 1),
    ),
    # a tuple Param (one scale per pyramid level): a list in the PNG's JSON, a tuple again when read
    "fdg": GenerationRequest(prompt=OTTER, mode="fdg", fdg_scales=(7.5, 2.25), seeds=(4,)),
}


@pytest.fixture
def image():
    return Image.new("RGB", (16, 8), (200, 120, 40))


def png_with_chunks(path, chunks):
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (4, 4)).save(path, format="PNG", pnginfo=info)
    return path


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_round_trip_from_path_and_from_image(tmp_path, image, name):
    request = REQUESTS[name]
    seed = request.seeds[-1]
    path = save_png(image, tmp_path / "out.png", request, seed, model="stabilityai/sdxl")
    assert path == tmp_path / "out.png"
    assert read_settings(path) == (request, seed)
    assert read_settings(str(path)) == (request, seed)
    with Image.open(path) as opened:
        assert read_settings(opened) == (request, seed)
        assert opened.size == image.size
        assert opened.convert("RGB").getpixel((0, 0)) == (200, 120, 40)


def test_json_chunk_holds_version_request_seed_and_model(tmp_path, image):
    request = REQUESTS["cfg"]
    path = save_png(image, tmp_path / "out.png", request, 2, model="tiny")
    with Image.open(path) as opened:
        data = json.loads(opened.text[SETTINGS_KEY])
        parameters = opened.text[PARAMETERS_KEY]
    assert data == {"version": 1, "request": request.to_dict(), "seed": 2, "model": "tiny"}
    assert parameters == parameters_text(request, 2, model="tiny")


def test_parameters_text_exact_a1111_layout():
    request = GenerationRequest(
        prompt=OTTER, prompt_2="Van Gogh, oil: thick", negative_prompt="solar system with 9 planets",
        mode="negative_direction", guidance_scale=7.5, steps=30, seeds=(1, 2), scheduler="ddim", eta=0.5,
    )
    assert parameters_text(request, 2, model="sd_xl_base_1.0") == (
        "a watercolor painting of an otter\n"
        "Negative prompt: solar system with 9 planets\n"
        "Steps: 30, Sampler: DDIM, Schedule type: Automatic, CFG scale: 7.5, Seed: 2, Size: 1024x1024, "
        "Model: sd_xl_base_1.0, Guidance mode: negative_direction, Uncond: zeros, Eta DDIM: 0.5, "
        'Prompt 2: "Van Gogh, oil: thick"'
    )


def test_parameters_keys_in_a1111_order_then_ours():
    request = GenerationRequest(prompt=OTTER, mode="reversed", scheduler="euler_a", width=640, height=512,
                                seeds=(9,))
    lines = parameters_text(request, 9, model="m").split("\n")
    assert lines[0] == OTTER
    keys = [pair.split(": ")[0] for pair in lines[-1].split(", ")]
    a1111 = ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model"]
    assert keys == a1111 + ["Guidance mode", "Uncond"]
    for pair in ("Sampler: Euler a", "Size: 640x512", "Guidance mode: reversed"):
        assert pair in lines[-1]


def test_negative_prompt_line_only_in_negative_direction_and_optional_keys_left_out():
    request = GenerationRequest(prompt=OTTER, negative_prompt="unused here", mode="cfg", scheduler="euler", eta=0.7)
    text = parameters_text(request, 0)
    assert "Negative prompt" not in text
    assert "Eta" not in text  # eta only means something to DDIM
    assert "Model" not in text and "Prompt 2" not in text
    assert len(text.split("\n")) == 2


@pytest.mark.parametrize("scheduler,label", [("euler", "Euler"), ("euler_a", "Euler a"), ("ddim", "DDIM"),
                                             ("dpmpp_2m", "DPM++ 2M")])
def test_sampler_labels(scheduler, label):
    assert f"Sampler: {label}," in parameters_text(GenerationRequest(prompt=OTTER, scheduler=scheduler), 0)


def test_every_scheduler_has_an_a1111_label():
    assert set(SAMPLER_NAMES) == set(SCHEDULERS)


def test_seed_must_be_one_of_the_requests_seeds(tmp_path, image):
    with pytest.raises(RequestError) as info:
        save_png(image, tmp_path / "out.png", REQUESTS["cfg"], 99)
    assert info.value.field == "seed"
    assert not (tmp_path / "out.png").exists()


def test_plain_png_has_no_settings(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(ValueError, match="carries no CFG Explorer settings") as info:
        read_settings(path)
    assert not isinstance(info.value, RequestError)


def test_not_an_image_is_a_value_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a png")
    with pytest.raises(ValueError, match="not an image"):
        read_settings(path)


def test_damaged_json_chunk(tmp_path):
    path = png_with_chunks(tmp_path / "bad.png", {SETTINGS_KEY: "{not json", PARAMETERS_KEY: "x"})
    with pytest.raises(ValueError, match="not valid JSON"):
        read_settings(path)


def test_unknown_version(tmp_path):
    data = json.loads(settings_json(REQUESTS["cfg"], 1))
    data["version"] = 2
    path = png_with_chunks(tmp_path / "v2.png", {SETTINGS_KEY: json.dumps(data)})
    with pytest.raises(ValueError, match="version 2"):
        read_settings(path)


@pytest.mark.parametrize("field,value,expected", [
    ("steps", 500, "1 to 200"),
    ("guidance_scale", -1.0, "0.0 to 50.0"),
    ("scheduler", "heun", "must be one of"),
    ("guidance_sclae", 7.0, "unknown field"),
])
def test_json_with_bad_request_value_names_the_field(tmp_path, field, value, expected):
    data = json.loads(settings_json(REQUESTS["cfg"], 1))
    data["request"][field] = value
    path = png_with_chunks(tmp_path / "tampered.png", {SETTINGS_KEY: json.dumps(data)})
    with pytest.raises(RequestError, match=expected) as info:
        read_settings(path)
    assert info.value.field == field


def test_json_seed_outside_the_request(tmp_path):
    data = json.loads(settings_json(REQUESTS["cfg"], 1))
    data["seed"] = 5
    path = png_with_chunks(tmp_path / "seed.png", {SETTINGS_KEY: json.dumps(data)})
    with pytest.raises(RequestError) as info:
        read_settings(path)
    assert info.value.field == "seed"


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_parameters_alone_read_back_as_a_one_seed_request(tmp_path, name):
    request = REQUESTS[name]
    seed = request.seeds[0]
    path = png_with_chunks(tmp_path / "a1111.png", {PARAMETERS_KEY: parameters_text(request, seed, model="m")})
    single = GenerationRequest.from_dict({**request.to_dict(), "seeds": [seed]})
    assert read_settings(path) == (single, seed)


def off_default(param):
    """A value of `param` that is not its default (one step up, or down where that leaves the range)."""
    def move(value):
        up = value + param.step
        return type(value)(up if up <= param.range[1] else value - param.step)
    return tuple(move(v) for v in param.default) if param.length else move(param.default)


@pytest.mark.parametrize("mode", [mode for mode in GUIDANCE_MODES.values() if mode.params], ids=lambda m: m.name)
def test_a_modes_own_settings_ride_in_the_a1111_text_and_read_back(tmp_path, mode):
    """Issue 20: each of the mode's own settings follows `Guidance mode` as a `Key: value` pair named by its page
    label (A1111 showed none of them), and A1111's text alone reads them back."""
    request = GenerationRequest(prompt=OTTER, mode=mode.name, seeds=(5,), guidance_scale=0.5 if mode.scale else 7.5,
                                negative_prompt="water" if "negative_prompt" in mode.reads else "",
                                **{param.name: off_default(param) for param in mode.params})
    text = parameters_text(request, 5)
    line = text.split("\n")[-1]
    ours = line[line.index(f"Guidance mode: {mode.name}"):]
    for param in mode.params:
        assert f"{a1111_key(param)}: " in ours
    path = png_with_chunks(tmp_path / "a1111.png", {PARAMETERS_KEY: text})
    assert read_settings(path) == (request, 5)


def test_a_tuple_setting_is_quoted_a1111_style():
    request = GenerationRequest(prompt=OTTER, mode="fdg", fdg_scales=(7.5, 1.0), seeds=(1,))
    assert 'Guidance mode: fdg, FDG scales: "7.5, 1.0", Uncond: zeros' in parameters_text(request, 1)


def test_a_bad_mode_setting_in_a1111_text_names_its_field(tmp_path):
    text = 'an otter\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Guidance mode: fdg, FDG scales: "7.5, x"'
    with pytest.raises(RequestError, match="FDG scales") as info:
        read_settings(png_with_chunks(tmp_path / "a1111.png", {PARAMETERS_KEY: text}))
    assert info.value.field == "fdg_scales"


def test_foreign_a1111_parameters(tmp_path):
    text = (
        "a cat, sitting\nNegative prompt: blurry, lowres\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 965400086, Size: 832x1216, "
        "Model hash: 45dee52b, Model: sd_xl_base_1.0, Version: v1.10.1"
    )
    path = png_with_chunks(tmp_path / "a1111.png", {PARAMETERS_KEY: text})
    expected = GenerationRequest(
        prompt="a cat, sitting", negative_prompt="blurry, lowres", mode="negative_direction", steps=20,
        scheduler="euler_a", guidance_scale=7.0, seeds=(965400086,), width=832, height=1216,
    )
    assert read_settings(path) == (expected, 965400086)


def test_foreign_sampler_without_counterpart_names_scheduler(tmp_path):
    text = "a cat\nSteps: 20, Sampler: DPM++ SDE, CFG scale: 7, Seed: 1, Size: 1024x1024"
    path = png_with_chunks(tmp_path / "a1111.png", {PARAMETERS_KEY: text})
    with pytest.raises(RequestError, match="DPM\\+\\+ SDE") as info:
        read_settings(path)
    assert info.value.field == "scheduler"


def test_parameters_without_settings_line(tmp_path):
    path = png_with_chunks(tmp_path / "prompt-only.png", {PARAMETERS_KEY: "just a prompt, nothing else"})
    with pytest.raises(ValueError, match="no settings line"):
        read_settings(path)


# --- hostile metadata: uploads come from strangers, and parsing them must never hold the server ----------

def _within(seconds: float, fn, *args):
    """Run `fn` on a thread; fail if it has not finished within `seconds` (a hang guard, not a speed target:
    the old backtracking parser took 3.8 s on the largest text read here, this one takes microseconds)."""
    import threading

    outcome = {}

    def run():
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.mark.parametrize("text", [
    "a " * 15_999,  # no colon at all: A1111's regex backtracks quadratically on this
    "a: " + "b " * 15_000,
    "x, " * 10_000 + "Steps: 20",
    'Steps: "' + "\\\\" * 7_000,  # an unterminated quoted value full of escapes
])
def test_hostile_parameters_text_is_parsed_in_linear_time(tmp_path, text):
    from pipeline.metadata import MAX_PARAMETERS_CHARS

    assert len(text) <= MAX_PARAMETERS_CHARS  # the worst case the reader accepts, not one it refuses
    path = png_with_chunks(tmp_path / "hostile.png", {PARAMETERS_KEY: text})
    with pytest.raises(ValueError):  # none of these is a valid settings line
        _within(1.0, read_settings, path)


def test_oversized_parameters_text_is_refused_before_parsing(tmp_path):
    from pipeline.metadata import MAX_PARAMETERS_CHARS

    text = "a cat\nSteps: 20, Sampler: Euler, Seed: 1, " + "Note: x, " * (MAX_PARAMETERS_CHARS // 9)
    path = png_with_chunks(tmp_path / "big.png", {PARAMETERS_KEY: text})
    with pytest.raises(ValueError, match="at most 32,000 are read"):
        _within(1.0, read_settings, path)


def test_settings_line_scanner_reads_what_a1111_reads():
    from pipeline.metadata import _settings_pairs

    line = 'Steps: 20, Sampler: "Euler, a", junk, Seed: 5,Size: 64x64, Prompt 2: "say \\"hi\\", ok", x: y'
    assert _settings_pairs(line) == [
        ("Steps", "20"), ("Sampler", '"Euler, a"'), ("Seed", "5"), ("Size", "64x64"),
        ("Prompt 2", '"say \\"hi\\", ok"'),  # a one-letter key is not a key, as in A1111's regex
    ]


@pytest.mark.parametrize("depth", [9, 30_000])
def test_deeply_nested_json_is_a_clear_error_not_a_recursion_error(tmp_path, depth):
    path = png_with_chunks(tmp_path / "nested.png", {SETTINGS_KEY: "[" * depth + "]" * depth})
    with pytest.raises(ValueError, match="nests deeper than 8 levels"):
        read_settings(path)


def test_json_depth_ignores_brackets_in_strings(tmp_path):
    data = json.loads(settings_json(REQUESTS["cfg"], 1))
    data["request"]["prompt"] = "[[[[[[[[[[{{{{{{{{ a cat"
    path = png_with_chunks(tmp_path / "brackets.png", {SETTINGS_KEY: json.dumps(data)})
    request, _ = read_settings(path)
    assert request.prompt == "[[[[[[[[[[{{{{{{{{ a cat"


def test_oversized_json_chunk_is_refused(tmp_path):
    path = png_with_chunks(tmp_path / "big.png", {SETTINGS_KEY: '{"pad": "' + "x" * 70_000 + '"}'})
    with pytest.raises(ValueError, match="at most 64,000 are read"):
        read_settings(path)
