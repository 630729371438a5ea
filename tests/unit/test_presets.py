"""Presets are data validated on load: the shipped ones are valid, and every kind of bad file names itself."""

import pytest

from pipeline import GenerationRequest
from pipeline.presets import PRESETS_DIR, Preset, PresetError, load_preset, load_presets

OTTER = "a watercolor painting of an otter"

GOOD = '''name = "Test preset"
description = "Look at the previews."
preview = "linear"

[request]
prompt = "a watercolor painting of an otter"
steps = 4
seeds = [3, 4]
'''


def write(tmp_path, text, name="01-test.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def expect_error(path, field):
    with pytest.raises(PresetError) as info:
        load_preset(path)
    assert info.value.field == field
    assert info.value.path == path
    message = str(info.value)
    assert path.name in message
    if field:
        assert f"{field}:" in message
    return message


@pytest.fixture(scope="module")
def shipped():
    return {preset.path.name: preset for preset in load_presets()}


def test_shipped_presets_load_sorted_by_file_name(shipped):
    names = list(shipped)
    assert len(names) >= 6
    assert names == sorted(names)
    assert names == sorted(path.name for path in PRESETS_DIR.glob("*.toml"))
    assert len({preset.name for preset in shipped.values()}) == len(names)


def test_shipped_presets_are_for_real_sdxl(shipped):
    for preset in shipped.values():
        assert isinstance(preset, Preset) and isinstance(preset.request, GenerationRequest)
        assert preset.description.strip() and preset.name.strip()
        assert preset.preview in (None, "vae", "tiny", "linear")
        assert (preset.request.steps, preset.request.width, preset.request.height) == (30, 1024, 1024), preset.path


def by_request(shipped, **wanted):
    found = [p for p in shipped.values() if all(getattr(p.request, k) == v for k, v in wanted.items())]
    assert found, f"no shipped preset with {wanted}"
    return found


def test_shipped_guidance_mode_presets(shipped):
    standard = by_request(shipped, prompt=OTTER, mode="cfg", guidance_scale=7.5, scheduler="euler")[0]
    reversed_ = by_request(shipped, prompt=OTTER, mode="reversed")[0]
    negative = by_request(shipped, prompt=OTTER, mode="negative_direction",
                          negative_prompt="solar system with 9 planets")[0]
    # Comparable runs: only the guidance changes.
    assert standard.request.seeds == reversed_.request.seeds == negative.request.seeds


def test_shipped_dual_encoder_preset(shipped):
    by_request(shipped, prompt="astronaut in a jungle, cold color palette", prompt_2="Van Gogh painting")


def test_shipped_ddim_eta_pair_differs_only_in_eta(shipped):
    (eta0,) = by_request(shipped, scheduler="ddim", eta=0.0)
    (eta1,) = by_request(shipped, scheduler="ddim", eta=1.0)
    assert len(eta0.request.seeds) == 1
    assert {**eta0.request.to_dict(), "eta": 1.0} == eta1.request.to_dict()
    # Each description sends the user to the other half of the pair.
    assert "eta 1" in eta0.description and "eta 0" in eta1.description


def test_good_preset_and_defaults(tmp_path):
    preset = load_preset(write(tmp_path, GOOD))
    assert preset == Preset(
        name="Test preset", description="Look at the previews.", preview="linear", path=tmp_path / "01-test.toml",
        request=GenerationRequest(prompt=OTTER, steps=4, seeds=(3, 4)),
    )
    assert preset.request.guidance_scale == GenerationRequest(prompt="x").guidance_scale


def test_preview_is_optional(tmp_path):
    assert load_preset(write(tmp_path, GOOD.replace('preview = "linear"\n', ""))).preview is None


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, 'colour = "red"\n' + GOOD)
    assert "unknown key" in expect_error(path, "colour")


def test_unknown_request_key(tmp_path):
    path = write(tmp_path, GOOD + "guidance_sclae = 9.0\n")
    assert "unknown field" in expect_error(path, "request.guidance_sclae")


@pytest.mark.parametrize("line,field,expected", [
    ("guidance_scale = 99.0", "guidance_scale", "0.0 to 50.0"),
    ("eta = 1.5", "eta", "0.0 to 1.0"),
    ("width = 1001", "width", "multiple of 8"),
    ('scheduler = "heun"', "scheduler", "must be one of"),
    ("seeds = [3, -1]", "seeds", "integer"),
    ("steps = 30.0", "steps", "integer"),
])
def test_out_of_range_request_value(tmp_path, line, field, expected):
    key = line.split(" = ")[0]
    lines = [old for old in GOOD.splitlines() if not old.startswith(f"{key} = ")]
    path = write(tmp_path, "\n".join(lines + [line]) + "\n")
    assert expected in expect_error(path, f"request.{field}")


def test_out_of_range_steps(tmp_path):
    path = write(tmp_path, GOOD.replace("steps = 4", "steps = 500"))
    message = expect_error(path, "request.steps")
    assert "1 to 200" in message and "500" in message


def test_malformed_toml_names_file_and_quotes_the_line(tmp_path):
    path = write(tmp_path, GOOD.replace("steps = 4", "steps = 4 x"))
    message = expect_error(path, None)
    assert "malformed TOML" in message
    assert "'steps = 4 x'" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "01-latin1.toml"
    path.write_bytes(GOOD.replace("previews", "prévisions").encode("latin-1"))
    assert "UTF-8" in expect_error(path, None)


@pytest.mark.parametrize("old,new,field", [
    ('preview = "linear"', 'preview = "full"', "preview"),
    ('description = "Look at the previews."', 'description = ""', "description"),
    ('description = "Look at the previews."', "", "description"),
    ('name = "Test preset"', "name = 3", "name"),
    ('prompt = "a watercolor painting of an otter"', "", "request.prompt"),
    ("seeds = [3, 4]", "seeds = 3", "request.seeds"),
])
def test_bad_top_level_values(tmp_path, old, new, field):
    assert old in GOOD
    expect_error(write(tmp_path, GOOD.replace(old, new)), field)


def test_missing_request_table(tmp_path):
    expect_error(write(tmp_path, GOOD.split("[request]")[0]), "request")


def test_request_must_be_a_table(tmp_path):
    expect_error(write(tmp_path, 'request = "prompt"\n' + GOOD.split("[request]")[0]), "request")


def test_load_presets_sorts_by_file_name_and_fails_on_one_bad_file(tmp_path):
    write(tmp_path, GOOD.replace("Test preset", "B"), "10-b.toml")
    write(tmp_path, GOOD.replace("Test preset", "A"), "02-a.toml")
    (tmp_path / "README.md").write_text("not a preset")
    assert [p.name for p in load_presets(tmp_path)] == ["A", "B"]
    write(tmp_path, GOOD.replace("steps = 4", "steps = 0"), "05-bad.toml")
    with pytest.raises(PresetError, match="05-bad.toml: request.steps"):
        load_presets(tmp_path)


def test_duplicate_names(tmp_path):
    write(tmp_path, GOOD, "01-a.toml")
    path = write(tmp_path, GOOD, "02-b.toml")
    with pytest.raises(PresetError, match="01-a.toml") as info:
        load_presets(tmp_path)
    assert info.value.field == "name" and info.value.path == path


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_presets(tmp_path / "nope")


def test_preset_error_is_a_value_error():
    assert issubclass(PresetError, ValueError)


def test_toy_table_replaces_request_fields_for_the_toy_world(tmp_path):
    preset = load_preset(write(tmp_path, GOOD + '\n[toy]\ndescription = "Look at the circles."\nprompt = "red circle"\n'
                                                'width = 256\nheight = 256\n'))
    request, description = preset.for_model(toy=True)
    assert (request.prompt, request.width, request.steps, request.seeds) == ("red circle", 256, 4, (3, 4))
    assert description == "Look at the circles."
    assert preset.for_model(toy=False) == (preset.request, preset.description)


def test_without_a_toy_table_the_toy_world_runs_the_request(tmp_path):
    preset = load_preset(write(tmp_path, GOOD))
    assert preset.for_model(toy=True) == (preset.request, preset.description)


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ('[toy]\nprompt_3 = "x"\n', "toy.prompt_3"),
        ("[toy]\nwidth = 100\n", "toy.width"),
        ('[toy]\ndescription = ""\n', "toy.description"),
        ("[toy]\nname = 3\n", "toy.name"),
        ("[toy]\nprompt_adherence = 1.5\n", "toy.prompt_adherence"),
        ('toy = "red circle"\n', "toy"),
    ],
)
def test_bad_toy_table_names_its_field(tmp_path, table, field):
    text = GOOD.replace("[request]", table + "\n[request]") if not table.startswith("[") else GOOD + "\n" + table
    expect_error(write(tmp_path, text), field)


def test_a_toy_name_is_listed_in_the_toy_world_and_must_be_unique_there(tmp_path):
    preset = load_preset(write(tmp_path, GOOD + '\n[toy]\nname = "Red circles"\nprompt = "red circle"\n'))
    assert (preset.title(toy=False), preset.title(toy=True)) == ("Test preset", "Red circles")
    plain = load_preset(write(tmp_path, GOOD.replace("Test preset", "Plain"), "02-plain.toml"))
    assert plain.title(toy=True) == "Plain"
    write(tmp_path, GOOD.replace("Test preset", "Other") + '\n[toy]\nname = "Red circles"\n', "03-same.toml")
    with pytest.raises(PresetError, match="Red circles") as info:
        load_presets(tmp_path)
    assert info.value.field == "toy.name"


def test_adherence_belongs_to_the_toy_table(tmp_path):
    expect_error(write(tmp_path, GOOD.replace("steps = 4", "steps = 4\nprompt_adherence = 0.5")),
                 "request.prompt_adherence")
    preset = load_preset(write(tmp_path, GOOD + "\n[toy]\nprompt_adherence = 0.3\n", "02-toy.toml"))
    assert preset.for_model(toy=True)[0].prompt_adherence == 0.3 and preset.request.prompt_adherence is None
