"""The Word maps tab's handlers (ui/words_tab.py), called as the page calls them: what they show, and every
refusal naming the control it is about."""

from __future__ import annotations

import pytest

import ui
from ui.controls import CONTROL_NAMES
from ui.explore import PAGE_DEFAULTS, REQUEST_DEFAULTS
from ui.explore.defaults import page_defaults
from ui.fields import Refused
from ui.words_tab import WordMaps


def _values(toy: bool = False, **changes) -> list:
    settings = {**REQUEST_DEFAULTS, **PAGE_DEFAULTS, **page_defaults(toy), "steps": 3, "width": 64, "height": 64,
                **changes}
    return [settings.get(name) for name in CONTROL_NAMES]


@pytest.fixture(scope="module")
def tiny_tab(tiny_pipe):
    return WordMaps(ui.Handlers(tiny_pipe, model_name="tiny"))


def test_map_words_shows_a_map_per_word_and_the_step_slider_one_steps_maps(tiny_tab):
    status, gallery, mixed, tokens, slider, recorded = tiny_tab.map_words(
        *_values(prompt="a red cat", prompt_2="blue dog"), word_seed=2)
    assert status.startswith("**Mapped:** seed 2, 3 words, 3 steps × 4 cross-attention layers")
    assert [caption.split(" · ")[0] for _, caption in gallery] == ["a / b", "red / lue", "cat / dog"]
    assert mixed["visible"] and "mix them" in mixed["value"]
    assert "| 1 | `a</w>` | `b` ⚠ |" in tokens and "`<\\|startoftext\\|>`" in tokens  # pipes escaped in the table
    assert slider["maximum"] == 3 and slider["value"] == 0
    step_gallery, shown = tiny_tab.show_step(recorded, 2)
    assert shown == "Showing: step 2/3, over its x̂₀." and len(step_gallery) == 3
    assert step_gallery[0][0].size == gallery[0][0].size == (64, 64)


def test_one_prompt_for_both_encoders_is_not_called_mixed(tiny_tab):
    _, _, mixed, tokens, _, _ = tiny_tab.map_words(*_values(prompt="a red cat"), word_seed=1)
    assert not mixed["visible"] and "⚠" not in tokens


@pytest.mark.parametrize("call, label", [
    (lambda tab: tab.map_words(*_values(), word_seed=-1), "Word seed"),
    (lambda tab: tab.map_words(*_values(), word_seed=2.5), "Word seed"),
    (lambda tab: tab.map_words(*_values(mode="uncond_only"), word_seed=1), "Guidance mode"),
    (lambda tab: tab.ablate(*_values(), word_seed=1, ablation_step=4), "Ablation step"),
    (lambda tab: tab.ablate(*_values(), word_seed=1, ablation_step=0), "Ablation step"),
    (lambda tab: tab.ablate(*_values(steps=0), word_seed=1, ablation_step=1), "Explore settings: Steps"),
    (lambda tab: tab.show_step(None, 999), "Word-map step"),
])
def test_refusals_name_the_control(tiny_tab, call, label):
    with pytest.raises(Refused) as info:
        call(tiny_tab)
    assert info.value.message.startswith(f"{label}:"), info.value.message


def test_the_step_slider_past_the_runs_steps_is_refused(tiny_tab):
    *_, recorded = tiny_tab.map_words(*_values(), word_seed=1)
    with pytest.raises(Refused) as info:
        tiny_tab.show_step(recorded, 4)
    assert info.value.message == "Word-map step: must be from 0 to 3 (the run's steps), got 4"


def test_the_toy_tab_ablates_and_refuses_maps_with_the_reason(toy_pipe):
    tab = WordMaps(ui.Handlers(toy_pipe, model_name="toy"))
    values = _values(toy=True, prompt="red circle left", steps=20, width=256, height=256)
    with pytest.raises(Refused, match="no attention layers"):
        tab.map_words(*values, word_seed=3)
    gallery, status = tab.ablate(*values, word_seed=3, ablation_step=1)
    assert status.startswith("**Ablated:** seed 3, step 1/20: 3 words")
    assert [caption for _, caption in gallery][6:8] == ["whole prompt · step 1", "without “left”"]


def test_the_toy_page_has_no_map_endpoints(toy_pipe):
    demo = ui.build_demo(ui.Handlers(toy_pipe, model_name="toy"), default_size=256)
    names = {d.get("api_name") for d in demo.config["dependencies"]}
    assert "ablate_words" in names and not {"map_words", "word_map_step"} & names
