"""The Distribution tab in Chromium, in the toy world: a run streams one result per scale, and the tab shows the
marginals-and-histogram figure, the numbers and the curves. Screenshots at 1440x900 and at phone width go to
`screenshots/` (git-ignored):

    python -m pytest tests/browser/test_distribution_browser.py -q -s
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.browser import test_browser
from tests.browser.test_browser import TIMEOUT_MS, screenshot, set_slider, set_text
from tests.browser.test_toy_browser import toy_browser

pytestmark = test_browser.pytestmark  # conftest.py skips (under CI=true: fails) without Chromium or playwright

SCALES = "1, 3, 7.5"
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def lab_app(tmp_path_factory):
    """(browser, url): the app on the toy world, and a Chromium."""
    with toy_browser(tmp_path_factory.mktemp("outputs")) as app:
        yield app


def open_lab(browser, url: str, viewport: dict):
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("button", name="Generate", exact=True).wait_for()
    tab = page.get_by_role("tab", name="Distribution")
    if tab.count() == 0:  # at phone width Gradio moves the tabs that do not fit under "More tabs"
        page.get_by_role("button", name="More tabs").click()
        tab = page.locator(".overflow-dropdown button", has_text="Distribution")
    tab.click()
    page.get_by_role("button", name="Run lab", exact=True).wait_for()
    # every text the status shows, short-lived ones too: the per-scale lines may last only a moment
    page.evaluate(
        """() => { window.labLog = []; const el = document.querySelector('#lab-status');
        new MutationObserver(() => window.labLog.push(el.innerText))
            .observe(el, {subtree: true, childList: true, characterData: true}); }"""
    )
    return page


def run_lab(page, seeds: int = 256, steps: int = 20) -> None:
    set_slider(page, "Lab seeds", seeds)
    set_slider(page, "Lab steps", steps)
    set_text(page, "Lab scales", SCALES)
    page.get_by_role("button", name="Run lab", exact=True).click()
    page.wait_for_function("() => /Done: scale 3 of 3/.test(document.querySelector('#lab-status').innerText)",
                           polling=50)


PLOT_HAS_LINE = ("(id) => [...document.querySelectorAll(`#${id} .mark-line path`)]"
                 ".some(p => /L/.test(p.getAttribute('d') || ''))")


def test_the_tab_streams_a_histogram_per_scale_and_draws_the_curves(lab_app):
    page = open_lab(*lab_app, {"width": 1440, "height": 900})
    try:
        run_lab(page)
        log = page.evaluate("() => window.labLog")
        # streamed: each scale's line was on the page before the next one's, and before the last
        seen = [next((i for i, text in enumerate(log) if f"scale {k} of 3" in text), None) for k in (1, 2, 3)]
        assert None not in seen and seen == sorted(seen), log
        assert any(f"Starting" in text for text in log[: seen[0] + 1])
        # one figure per scale to flip between, the newest shown: the marginals over the histogram, full width
        shown = page.locator("#lab-shown")
        assert shown.locator("input[type=radio]").count() == 3
        assert shown.get_by_label("s = 7.5", exact=True).is_checked()
        picture = page.locator("#lab-figure img")
        figure = Image.open(io.BytesIO(picture.screenshot())).convert("RGB")
        assert figure.width > 600 and np.asarray(figure).std() > 20, figure.size  # drawn, not blank; not shrunk
        newest = picture.get_attribute("src")
        shown.get_by_label("s = 1", exact=True).check()
        page.wait_for_function("(old) => document.querySelector('#lab-figure img')?.getAttribute('src') !== old",
                               arg=newest)
        # the numbers, and the three curves, each with a drawn line
        assert page.locator("#lab-numbers").get_by_text("s = 7.5", exact=True).count() >= 1
        for plot in ("lab-precision", "lab-entropy", "lab-tv"):
            page.wait_for_function(PLOT_HAS_LINE, arg=plot)
        assert "noise band" in page.locator("#lab-note").inner_text()
        screenshot(page, "distribution-1440.png")
    finally:
        page.close()


def test_a_preset_at_phone_width(lab_app):
    """A lab preset fills the inputs and keeps its note on the page; the run fits the phone's width."""
    page = open_lab(*lab_app, PHONE)
    try:
        preset = page.locator("#lab-preset input")
        preset.click()
        page.get_by_role("option", name="Why guidance", exact=True).click()
        page.wait_for_function("() => /Why guidance\\./.test(document.querySelector('#lab-preset-note').innerText)")
        assert "256" == page.locator("#lab-seeds input[type=number]").input_value()
        page.get_by_role("button", name="Run lab", exact=True).click()
        page.wait_for_function("() => /Done: scale 3 of 3/.test(document.querySelector('#lab-status').innerText)",
                               polling=100)
        page.wait_for_function(PLOT_HAS_LINE, arg="lab-precision")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"] + 1, f"the page scrolls sideways: {width} px"
        screenshot(page, "distribution-390.png")
    finally:
        page.close()
