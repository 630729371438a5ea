"""The toy world in Chromium: the page says what it runs, lists its words, and "red circle" looks red on screen.

Runs the app in-process on the toy pipeline, as `python app.py --model toy` does. Screenshots go to
`screenshots/` (git-ignored):

    python -m pytest tests/browser/test_toy_browser.py -q -s
"""

from __future__ import annotations

import io
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from tests.browser import test_browser
from tests.browser.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    block,
    choose,
    configure,
    free_port,
    open_group,
    screenshot,
    set_slider,
    set_text,
    wait_for_captions,
    wait_for_text,
)

pytestmark = test_browser.pytestmark  # conftest.py skips (under CI=true: fails) without Chromium or playwright


@contextmanager
def toy_browser(output_dir):
    """The app on the toy world, in-process (as `python app.py --model toy`), and a Chromium to visit it:
    yields (browser, url)."""
    import pipeline.presets
    import ui
    from pipeline.models import ToyPreviewDecoder
    from ui import render

    pipe = pipeline.toy_pipeline()
    handlers = ui.Handlers(pipe, taesd=ToyPreviewDecoder(pipe.vae), model_name="toy",
                           presets=pipeline.presets.load_presets(), output_dir=output_dir)
    demo = ui.build_demo(handlers, banner=render.banner("toy", None),
                         default_size=pipe.default_sample_size * pipe.vae_scale_factor)
    with in_chromium(demo) as (browser, url):
        yield browser, url


@contextmanager
def in_chromium(demo):
    """`demo` served on a free local port, and a Chromium to visit it: yields (browser, url)."""
    from playwright.sync_api import sync_playwright

    demo.queue()
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield browser, f"http://127.0.0.1:{port}/"
            finally:
                browser.close()
    finally:
        demo.close()


@pytest.fixture(scope="module")
def toy_page(tmp_path_factory):
    with toy_browser(tmp_path_factory.mktemp("outputs")) as (browser, url):
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("button", name="Generate", exact=True).wait_for()
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=status-tracker]:not(.hide)').length === 0"
        )
        yield page


def test_red_circle_is_red_on_screen(toy_page):
    page = toy_page
    banner = page.locator("#model-banner").inner_text()
    assert "toy world: an exact denoiser over 96 drawn shapes; SDXL's weights are not loaded" in banner
    words = page.locator("#toy-words").inner_text()
    assert all(word in words for word in ("red", "circle", "triangle", "yellow"))

    assert page.locator("textarea").first.input_value() == "red circle"  # the toy's first prompt is in its words
    configure(page, steps=12, seeds=2)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_text(page, "#status", r"Done: step 12/12")
    wait_for_captions(page, ["seed 1", "seed 2"])
    screenshot(page, "toy-1-red-circle.png")

    image = page.locator("#images img").first
    image.scroll_into_view_if_needed()
    shot = np.asarray(Image.open(io.BytesIO(image.screenshot())).convert("RGB"), dtype=np.int32)
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    red = (r - np.maximum(g, b)) > 80  # clearly red pixels
    other = (np.maximum(g, b) - r) > 40  # clearly green, blue or yellow-green pixels
    assert red.mean() > 0.03, f"only {red.mean():.1%} of the shown image is red"
    assert red.sum() > 5 * other.sum(), f"red {red.sum()} px vs other colours {other.sum()} px"

    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "toy-2-phone.png")
    page.set_viewport_size({"width": 1440, "height": 900})


def test_the_adherence_slider_and_an_image_off_the_data(toy_page):
    """The toy page has the adherence slider, says what it means, and after a run says which seeds left the data
    and why: at adherence 1 the "blue" baseline can only pick blue items, so the negative direction extrapolates."""
    page = toy_page
    slider = block(page, "Toy model: how well it learned prompts")
    assert slider.locator("input[type=number]").input_value() == "0.5"
    assert "with probability 1 − a the model ignores the prompt" in slider.inner_text()
    assert "at 1 the model is perfect and needs none" in slider.inner_text()
    set_text(page, "Prompt", "circle")
    choose(page, "Guidance mode", "Custom negative direction")
    set_text(page, "Negative direction prompt", "blue")
    set_slider(page, "Toy model: how well it learned prompts", 1)
    configure(page, steps=30, seeds=2)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_text(page, "#status", r"seed 1: not a data item \(distance \d+")
    assert "guidance extrapolated past the data" in page.locator("#status").inner_text()
    wait_for_captions(page, ["seed 1 · not a data item", "seed 2 · not a data item"])
    screenshot(page, "toy-2-off-the-data.png")
    set_slider(page, "Toy model: how well it learned prompts", 0.5)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_text(page, "#status", r"Data items: seed 1: big yellow circle, top right · seed 2: big yellow circle")
    wait_for_captions(page, ["seed 1", "seed 2"])
    screenshot(page, "toy-3-on-the-data.png")


def test_img2img_from_a_data_item(toy_page):
    page = toy_page
    set_text(page, "Prompt", "red circle")
    choose(page, "Guidance mode", "Standard CFG")
    open_group(page, "Size and start image (img2img)")
    wait_for_text(page, "#strength-info", "The toy world snaps to its data")
    page.get_by_role("button", name="Start from a data item: big blue square, top left").click()
    wait_for_text(page, "#strength-info", r"Runs the last \d+ of 30 steps")
    set_slider(page, "Strength", 0.5)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_text(page, "#status", r"Data items: seed 1: big blue square, top left · seed 2: big blue square")
    screenshot(page, "toy-4-img2img-data-item.png")
