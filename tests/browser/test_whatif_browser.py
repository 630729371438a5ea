"""The what-if panel in Chromium (issue 10), on the toy world: moving the what-if scale slider changes the shown x̂₀
with no new queue job; "Continue from this step" streams a fork, which joins the branches; the run is one pick
away. Screenshots (desktop and phone) go to `screenshots/` (git-ignored):

    python -m pytest tests/browser/test_whatif_browser.py -q -s
"""

from __future__ import annotations

from tests.browser import test_browser
from tests.browser.test_browser import (
    configure,
    log_status,
    now_ms,
    screenshot,
    set_slider,
    set_text,
    wait_for_captions,
    wait_for_status_log,
    wait_for_text,
)
from tests.browser.test_toy_browser import toy_page  # noqa: F401 (the fixture: the app on the toy world)

pytestmark = test_browser.pytestmark
PANEL = "What-if at the revisited step"


def _whatif_sources(page) -> list[str]:
    return page.locator("#whatif img").evaluate_all("imgs => imgs.map(i => i.src)")


def _column_fits(page) -> None:
    """Both columns sit side by side inside the window: the results column is neither pushed out nor squeezed."""
    left, right = (page.locator(sel).bounding_box() for sel in ("#controls", "#results"))
    width = page.viewport_size["width"]
    assert right["x"] >= left["x"] + left["width"] - 1 and right["x"] + right["width"] <= width, (left, right)
    assert right["width"] >= 0.35 * width, right


def test_the_whatif_slider_rerenders_without_a_queue_job_and_a_fork_becomes_a_branch(toy_page):  # noqa: F811
    page = toy_page
    set_text(page, "Prompt", "a red circle")
    configure(page, steps=8, seeds=2)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_text(page, "#status", r"Done: step 8/8")

    page.locator(".label-wrap").filter(has_text=PANEL).click()
    set_slider(page, "Revisit step", 4)  # its own preview (a queued job) and the what-if at the run's scale
    wait_for_text(page, "#whatif-summary", r"Step 4: Standard CFG, scale 7.5 \(the run used Standard CFG, 7.5\)")
    page.wait_for_function("() => document.querySelectorAll('#whatif img').length === 4")
    _column_fits(page)

    queued: list[str] = []
    page.on("request", lambda r: queued.append(r.url) if "queue/join" in r.url else None)
    before = _whatif_sources(page)
    set_slider(page, "What-if scale", 1)
    wait_for_text(page, "#whatif-summary", r"Step 4: Standard CFG, scale 1 \(the run used")
    page.wait_for_function("(old) => { const now = [...document.querySelectorAll('#whatif img')].map(i => i.src);"
                           " return now.length === 4 && now.join() !== old.join(); }", arg=before)
    assert queued == []  # the recombination ran outside the queue: no job, no UNet
    screenshot(page, "whatif-1-slider.png")

    log_status(page)  # the fork's first status may last less than one poll: read it from the log
    since = now_ms(page)
    page.get_by_role("button", name="Continue from this step", exact=True).click()
    wait_for_status_log(page, r"Continuing from step 4/8", since)
    test_browser.wait_for_run_done(page, since, r"Done: step 8/8")
    branches = test_browser.block(page, "Branches")
    fork_name = "Guidance scale 7.5 → 1 from step 4"  # the controls' labels, not "s 7.5 → 1" (issue 18)
    branches.get_by_label(fork_name, exact=True).wait_for()
    assert branches.get_by_label(fork_name, exact=True).is_checked()
    assert any("queue/join" in url for url in queued)  # the fork is a real, queued run
    wait_for_captions(page, ["seed 1", "seed 2"])  # the fork's final images
    # The page says which branch the images show, and the what-if follows the fork instead of keeping the last
    # what-if of the run (issue 18).
    assert page.locator("#images").get_by_text(f"Images: fork {fork_name}", exact=True).is_visible()
    wait_for_text(page, "#whatif-summary", rf"Branch: {fork_name}\.")
    wait_for_text(page, "#whatif-summary", r"Step 8: Standard CFG, scale 1 \(the run used Standard CFG, 1\)")
    forked = page.locator("#images img").evaluate_all("imgs => imgs.map(i => i.src)")
    _column_fits(page)
    screenshot(page, "whatif-2-fork.png")

    branches.get_by_label("the run", exact=True).check()
    wait_for_text(page, "#status", r"Showing branch: the run")
    assert page.locator("#images").get_by_text("Images: the run", exact=True).is_visible()
    page.wait_for_function("(old) => [...document.querySelectorAll('#images img')].map(i => i.src).join() !== old.join()",
                           arg=forked)

    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "whatif-3-phone.png")
    page.set_viewport_size({"width": 1440, "height": 900})


def test_a_fork_png_dropped_on_the_page_keeps_its_path_for_generate(toy_page, tmp_path):  # noqa: F811
    """The PNG's path is shown, Generate replays it (the fork's image), and Forget the fork path drops it."""
    from PIL import Image

    from pipeline import GenerationRequest
    from pipeline.metadata import save_png

    page = toy_page
    request = GenerationRequest(prompt="a red circle", steps=8, seeds=(1, 2), width=64, height=64, guidance_scale=7.5,
                                forks=({"step": 3, "changes": {"guidance_scale": 1.0}},))
    png = save_png(Image.new("RGB", (64, 64)), tmp_path / "fork.png", request, seed=1)
    page.locator(".label-wrap").filter(has_text="Links and saved settings").click()
    page.locator("#group-links input[type=file]").set_input_files(str(png))
    wait_for_text(page, "#fork-note", r"This PNG is a fork: Guidance scale 7.5 → 1 from step 3\. Generate replays its whole path")
    forget = page.get_by_role("button", name="Forget the fork path", exact=True)
    assert forget.is_visible()
    wait_for_text(page, "#changed-note", r"This PNG is a fork")  # said beside the presets, scrolled into view
    page.locator("#fork-note").scroll_into_view_if_needed()
    screenshot(page, "whatif-4-fork-png.png")
    log_status(page)
    since = now_ms(page)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_status_log(page, r"Starting along the restored fork path \(1 fork\)", since)
    wait_for_text(page, "#status", r"Done: step 8/8")
    forget.click()
    page.wait_for_function("() => !document.querySelector('#fork-note').innerText.trim()")
    assert not forget.is_visible()
