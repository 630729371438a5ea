"""PAG, SEG and autoguidance in the toy world, in Chromium (issue 22): PAG and SEG are greyed out on Guidance
mode with the reason, and cannot be picked; the autoguidance preset runs and says its seeds left the data.

    python -m pytest tests/browser/test_perturbed_browser.py -q -s
"""

from __future__ import annotations

import pytest

from tests.browser import test_browser
from tests.browser.test_browser import TIMEOUT_MS, block, screenshot, wait_for_captions, wait_for_text
from tests.browser.test_toy_browser import toy_browser

pytestmark = test_browser.pytestmark

PRESET = "Autoguidance: guide away from a weaker model"


@pytest.fixture(scope="module")
def toy_page(tmp_path_factory):
    with toy_browser(tmp_path_factory.mktemp("outputs")) as (browser, url):
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("button", name="Generate", exact=True).wait_for()
        yield page


def test_pag_and_seg_are_greyed_and_the_autoguidance_preset_runs(toy_page):
    page = toy_page
    mode = block(page, "Guidance mode")
    assert "no attention layers" in mode.inner_text()
    for label, greyed in (("PAG (perturbed attention)", True), ("SEG (smoothed energy)", True),
                          ("Autoguidance (weaker model)", False), ("Standard CFG", False)):
        option = page.locator(f'#ctl-mode label[data-testid="{label}-radio-label"]')
        style = option.evaluate("e => [getComputedStyle(e).opacity, getComputedStyle(e).pointerEvents]")
        assert (float(style[0]) < 0.5 and style[1] == "none") == greyed, (label, style)
    # a click on a greyed choice does not pick it
    page.locator('#ctl-mode label[data-testid="PAG (perturbed attention)-radio-label"]').click(force=True)
    assert mode.get_by_label("Standard CFG", exact=True).is_checked()

    page.locator("#presets").get_by_text(PRESET, exact=True).click()
    wait_for_text(page, "#preset-note", "autoguidance keeps it")
    assert mode.get_by_label("Autoguidance (weaker model)", exact=True).is_checked()
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_text(page, "#status", r"Done: step 30/30")
    wait_for_captions(page, [f"seed {k} · not a data item" for k in range(1, 9)])
    screenshot(page, "perturbed-1-autoguidance-toy.png")
    mode.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot(page, "perturbed-2-modes.png").with_name("perturbed-2-modes-view.png")))
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "perturbed-3-phone.png")
    mode.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot(page, "perturbed-3-phone.png").with_name("perturbed-4-phone-modes-view.png")))
    page.set_viewport_size({"width": 1440, "height": 900})
