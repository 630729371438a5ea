"""The Word maps tab in Chromium (issue 22): on the tiny SDXL, Map words shows a heat map per word, says that a
different Prompt 2 mixes into the same maps, and the step slider shows one step's maps; in the toy world the
tab offers word ablation and says why there are no maps, and dropping "left" changes the left of x̂₀.

Screenshots go to `screenshots/` (git-ignored), or to $WORDS_SHOTS:

    python -m pytest tests/browser/test_words_browser.py -q -s
"""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser import test_browser
from tests.browser.test_browser import (TIMEOUT_MS, block, configure, open_group,
                                        set_number, set_slider, set_text, wait_for_text)
from tests.browser.test_toy_browser import in_chromium, toy_browser

pytestmark = test_browser.pytestmark
SHOTS = Path(os.environ.get("WORDS_SHOTS") or test_browser.SCREENSHOTS)
PHONE = {"width": 390, "height": 844}


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


@contextmanager
def tiny_browser(output_dir):
    """The app on the tiny random SDXL, in-process, and a Chromium: yields (browser, url)."""
    import pipeline
    import ui

    handlers = ui.Handlers(pipeline.tiny_pipeline(0), taesd=pipeline.tiny_taesd(), model_name="tiny",
                           output_dir=output_dir)
    with in_chromium(ui.build_demo(handlers, default_size=64)) as (browser, url):
        yield browser, url


def open_tab(browser, url: str):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("button", name="Generate", exact=True).wait_for()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=status-tracker]:not(.hide)').length === 0")
    return page


def red_halves(thumbnail) -> tuple[float, float]:
    """How red the left and right halves of a shown thumbnail are (mean of red minus the larger other channel)."""
    shown = np.asarray(Image.open(io.BytesIO(thumbnail.screenshot())).convert("RGB"), dtype=np.float64)
    red = np.clip(shown[..., 0] - shown[..., 1:].max(axis=-1), 0, None)
    half = red.shape[1] // 2
    return float(red[:, :half].mean()), float(red[:, half:].mean())


def captions(page, gallery: str) -> list[str]:
    return [c.strip() for c in page.locator(f"#{gallery} .caption-label").all_inner_texts()]


def test_word_maps_on_sdxl_mix_the_two_encoders_and_follow_the_step_slider(tmp_path):
    with tiny_browser(tmp_path) as (browser, url):
        page = open_tab(browser, url)
        set_text(page, "Prompt", "a red cat")
        open_group(page, "Prompt 2 and the unconditional baseline")
        set_text(page, "Prompt 2", "blue dog")
        open_group(page, "Size and start image")
        set_slider(page, "Width", 256)
        set_slider(page, "Height", 192)  # not square: the maps follow the latent's own aspect
        configure(page, steps=4, seeds=1)
        page.get_by_role("tab", name="Word maps").click()
        assert page.locator("#words-toy-note").count() == 0
        page.get_by_role("button", name="Map words").click()
        wait_for_text(page, "#words-status", r"Mapped: seed 1, 3 words, 4 steps")
        page.wait_for_function("() => document.querySelectorAll('#word-maps .caption-label').length === 3")
        assert [c.split(" · ")[0] for c in captions(page, "word-maps")] == ["a / b", "red / lue", "cat / dog"]
        assert "so these maps mix them" in page.locator("#words-mixed").inner_text()
        open_group(page, "Token positions")
        table = page.locator("#word-tokens table")
        table.locator("tr").nth(9).wait_for()  # the accordion renders its contents once opened
        assert table.locator("tr").count() == 10  # the header, then positions 0 (start) to 8 (end)
        assert table.locator("tr").nth(1).inner_text().split("\t")[1:] == ["<|startoftext|>", "<|startoftext|>"]
        assert table.locator("tr").nth(2).inner_text().split("\t")[1:] == ["a</w>", "b ⚠"]
        shot(page, "words-1-sdxl-maps.png")

        set_slider(page, "Word-map step", 2)
        wait_for_text(page, "#word-map-shown", r"step 2/4, over its x̂₀")
        page.get_by_role("button", name="Ablate words").click()
        wait_for_text(page, "#words-status", r"Ablated: seed 1, step 1/4: 5 words")
        assert "without “red”" in captions(page, "word-ablation")
        shot(page, "words-2-sdxl-step-and-ablation.png")
        page.set_viewport_size(PHONE)
        shot(page, "words-3-sdxl-phone.png")

        set_number(page, "Word seed", -1)
        page.get_by_role("button", name="Map words").click()
        page.locator(".toast-message-text").filter(has_text="Word seed: must be").first.wait_for()


def test_the_toy_offers_ablation_and_left_changes_the_left_half(tmp_path):
    with toy_browser(tmp_path) as (browser, url):
        page = open_tab(browser, url)
        set_text(page, "Prompt", "red circle left")
        configure(page, steps=20, seeds=1)
        set_number(page, "Seed", 3)
        page.get_by_role("tab", name="Word maps").click()
        note = page.locator("#words-toy-note").inner_text()
        assert "has no attention maps" in note and "no attention layers" in note
        assert page.get_by_role("button", name="Map words").count() == 0
        set_number(page, "Word seed", 3)
        page.get_by_role("button", name="Ablate words").click()
        wait_for_text(page, "#words-status", r"Ablated: seed 3, step 1/20: 3 words")
        page.wait_for_function("() => document.querySelectorAll('#word-ablation .caption-label').length === 9")
        found = captions(page, "word-ablation")
        assert found[6] == "whole prompt · step 1" and found[7] == "without “left”"
        assert found[8].startswith("Δ “left”")
        # on screen: x̂₀ with the whole prompt is red on the left; without "left" red moves onto the right too
        full, without = (red_halves(page.locator("#word-ablation .thumbnail-item").nth(k)) for k in (6, 7))
        assert full[0] > 3 * full[1] and without[1] > 2 * full[1]
        shot(page, "words-4-toy-ablation.png")
        page.set_viewport_size(PHONE)
        shot(page, "words-5-toy-phone.png")
