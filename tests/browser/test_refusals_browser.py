"""Issue 18 in Chromium, on the toy world: decomposition images always load (point 2), a refused value neither
runs nor is clamped and is named and outlined (point 4), and a refused value and a full run leave no 500, no
console error and no "Infinite extent" chart warning (point 15).

    python -m pytest tests/browser/test_refusals_browser.py -q
"""

from __future__ import annotations

import pytest

from tests.browser import test_browser
from tests.browser.test_browser import (
    TIMEOUT_MS,
    block,
    captions,
    configure,
    log_status,
    now_ms,
    open_group,
    screenshot,
    status_log,
    status_text,
    wait_for_captions,
    wait_for_run_done,
    wait_for_status_log,
    wait_for_text,
)

from tests.browser.test_toy_browser import toy_browser

pytestmark = test_browser.pytestmark

ALL_LOADED = "() => [...document.querySelectorAll('#decomposition img, #images img')].every(i => i.complete)"
# The four panels' decoded widths, read in one go once each has loaded or failed (a broken image is complete with
# width 0); false until then. The panels are scrolled into view first, since the browser may defer loading an
# image that is out of view (the results column scrolls).
PANEL_WIDTHS = """() => { const images = [...document.querySelectorAll('#decomposition img')];
    images.forEach(i => i.scrollIntoView({block: 'nearest'}));
    return images.length === 4 && images.every(i => i.complete) && images.map(i => i.naturalWidth); }"""
# what each kind of defect looked like in the console
BAD_CONSOLE = ("Infinite extent", "status of 500", "CONTENT_LENGTH")


@pytest.fixture(scope="module")
def toy_app(tmp_path_factory):
    with toy_browser(tmp_path_factory.mktemp("outputs")) as app:
        yield app


@pytest.fixture
def page(toy_app):
    """A fresh page; what the console and the network reported, in `page.problems`."""
    browser, url = toy_app
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.problems = []
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") and "Vega-Lite v5" not in m.text and "zero" not in m.text else None)
    page.on("response", lambda r: page.problems.append(f"status of {r.status}: {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda r: page.problems.append(f"failed {r.failure}: {r.url}")
            if "ABORTED" not in (r.failure or "") else None)  # an image replaced by the next frame is aborted
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("button", name="Generate", exact=True).wait_for()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=status-tracker]:not(.hide)').length === 0")
    log_status(page)
    yield page
    page.close()


def generate_and_wait(page, steps: int) -> None:
    since = now_ms(page)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_run_done(page, since, rf"Done: step {steps}/{steps}")
    page.wait_for_function(ALL_LOADED)


def test_every_decomposition_image_loads_over_several_runs(page):
    configure(page, steps=12, seeds=4)
    open_group(page, "Previews and decomposition")
    page.get_by_label("Decomposition view").check()
    for run in range(4):
        generate_and_wait(page, 12)
        sizes = page.wait_for_function(PANEL_WIDTHS).json_value()
        assert len(sizes) == 4 and all(size > 0 for size in sizes), f"run {run + 1}: broken panels {sizes}"
    note = page.locator("#decomposition-note").inner_text()
    assert "Opened at step" in note and "differ most" in note
    screenshot(page, "refusals-1-decomposition.png")
    assert not [p for p in page.problems if any(bad in p for bad in BAD_CONSOLE) or "failed" in p], page.problems


def test_steps_0_is_refused_not_clamped_and_the_results_stay(page):
    configure(page, steps=6, seeds=2)
    generate_and_wait(page, 6)
    wait_for_captions(page, ["seed 1", "seed 2"])
    images = page.evaluate("() => [...document.querySelectorAll('#images img')].map(i => i.src)")
    steps = block(page, "Steps").locator("input[type=number]")
    steps.fill("0")
    since = now_ms(page)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_text(page, "#status", r"Nothing ran: Steps: must be a whole number from 1 to 200, got 0")
    page.wait_for_timeout(1500)  # time for a run to start, if one wrongly did
    assert steps.input_value() == "0", "the browser clamped Steps"
    assert not [text for _, text in status_log(page, since) if "Starting" in text or "Denoising" in text]
    assert captions(page) == ["seed 1", "seed 2"]
    assert page.evaluate("() => [...document.querySelectorAll('#images img')].map(i => i.src)") == images
    assert page.locator("#ctl-steps").evaluate("e => getComputedStyle(e).outlineStyle") == "solid"
    screenshot(page, "refusals-2-steps-0.png")
    steps.fill("6")
    steps.press("Enter")
    generate_and_wait(page, 6)  # a full run after the refusal
    assert page.locator("#ctl-steps").evaluate("e => getComputedStyle(e).outlineStyle") == "none"
    assert not [p for p in page.problems if any(bad in p for bad in BAD_CONSOLE) or "error" in p], page.problems


def test_an_empty_seed_is_named_and_outlined(page):
    seed = block(page, "Seed").locator("input[type=number]")
    seed.fill("")
    seed.blur()
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_text(page, "#status", r"Nothing ran: Seed: is required")
    assert "see the message" not in status_text(page)
    assert page.locator("#ctl-seed").evaluate("e => getComputedStyle(e).outlineStyle") == "solid"
    assert page.locator(".toast-message-text").filter(has_text="Seed: is required").count() >= 1
    screenshot(page, "refusals-3-empty-seed.png")
    page.set_viewport_size({"width": 390, "height": 844})
    page.locator("#status").scroll_into_view_if_needed()
    screenshot(page, "refusals-4-empty-seed-phone.png")
    assert not [p for p in page.problems if any(bad in p for bad in BAD_CONSOLE) or "error" in p], page.problems


def server_calls(page) -> list[str]:
    """The event calls the page makes from now on (a queued event joins the queue, one outside it posts to run/)."""
    calls = []
    page.on("request", lambda r: calls.append(r.url.split("/gradio_api/")[-1].split("?")[0])
            if r.method == "POST" and "/gradio_api/" in r.url else None)
    return calls


@pytest.mark.parametrize("label, value, said", [
    ("Steps", "0", "Steps: must be a whole number from 1 to 200, got 0"),  # refused by the control's own check
    ("Seed", "", "Seed: is required"),
])
def test_a_refusal_marks_its_control_in_generates_own_response(page, label, value, said):
    """Issue 20: the control is outlined from Generate's own response, with no second call to the server (the
    page used to ask, in a second event, which control the refusal named)."""
    field = block(page, label).locator("input[type=number]")
    field.fill(value)
    field.blur()
    page.wait_for_timeout(1000)  # the events that describe the controls as they change, answered before the count
    calls = server_calls(page)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_text(page, "#status", rf"Nothing ran: {said}")
    page.wait_for_timeout(1500)  # time for a second call, if one were made
    assert calls == ["queue/join"], calls
    name = label.lower()
    assert page.locator(f"#ctl-{name}").evaluate("e => getComputedStyle(e).outlineStyle") == "solid"
    others = page.evaluate("""(name) => [...document.querySelectorAll('[id^=ctl-]')].filter(e => e.id !== 'ctl-' + name
        && getComputedStyle(e).outlineStyle === 'solid').map(e => e.id)""", name)
    assert others == [], others
    assert page.locator(".toast-message-text").filter(has_text=said).count() >= 1
    assert page.locator("#status .error, #invalid-style .error").count() == 0  # no output left in an error state
    screenshot(page, f"refusals-5-one-call-{name}.png")
