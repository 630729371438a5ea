"""Where things sit on the page (issue 18, points 12-14), measured in Chromium on the toy world: the guidance plot
within a 1440x900 window, every gallery image of 8 seeds in view, a preset's "Changed:" note beside the picker, a PNG
dropped on the results restoring its settings, Generate on a phone's first screen, whole sweep captions, and the
Invert tab forgetting the last image's results on a new upload. Screenshots go to `screenshots/` (git-ignored):

    python -m pytest tests/browser/test_page_layout_browser.py -q -s
"""

from __future__ import annotations

import base64

from tests.browser import test_browser
from tests.browser.test_browser import (TIMEOUT_MS, block, log_status, now_ms, screenshot, set_slider, set_text,
                                       wait_for_run_done, wait_for_text)
from tests.browser.test_toy_browser import toy_page  # noqa: F401 (the fixture: the app on the toy world)

pytestmark = test_browser.pytestmark
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}


def _box(page, selector: str) -> dict:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not on the page"
    return box


def _in_window(page, selector: str) -> dict:
    """The element's box, asserted to lie wholly inside the window as the page is scrolled now."""
    box, window = _box(page, selector), page.viewport_size
    assert box["y"] >= 0 and box["y"] + box["height"] <= window["height"] + 0.5, (selector, box, window)
    assert box["x"] >= 0 and box["x"] + box["width"] <= window["width"] + 0.5, (selector, box, window)
    return box


def _generate(page) -> None:
    """Generate, and wait for this run's own "Done" (the status still shows the last run's until it starts), and
    for its images to load."""
    log_status(page)
    since = now_ms(page)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_run_done(page, since)
    page.wait_for_function("() => [...document.querySelectorAll('#images img')].every(i => i.complete)")


def _explore(page) -> None:
    page.get_by_role("tab", name="Explore").click()
    page.set_viewport_size(DESKTOP)
    page.evaluate("() => window.scrollTo(0, 0)")


def test_the_guidance_plot_and_every_image_of_8_seeds_are_in_view_at_1440x900(toy_page):  # noqa: F811
    """Issue 18: the plot sat below the fold of the results column (its top at 800 px of a 900 px window), and with 8
    seeds the gallery cut its second row."""
    page = toy_page
    _explore(page)
    set_slider(page, "Steps", 8)
    _generate(page)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_function("() => document.querySelectorAll('#norm-plot canvas, #norm-plot svg').length > 0")
    screenshot(page, "layout-1-desktop-plot.png")
    plot = _in_window(page, "#norm-plot")
    assert plot["height"] >= 200, plot  # the plot itself, not a squeezed strip

    set_slider(page, "Number of seeds", 8)
    _generate(page)
    page.wait_for_function("() => document.querySelectorAll('#images img').length === 8")
    page.evaluate("() => window.scrollTo(0, 0)")
    screenshot(page, "layout-2-desktop-8-seeds.png")
    gallery = _in_window(page, "#images")
    for k in range(8):  # each image whole, inside the gallery and the window, and on top at its centre
        image = page.locator("#images img").nth(k).bounding_box()
        assert gallery["y"] <= image["y"] and image["y"] + image["height"] <= gallery["y"] + gallery["height"], (k, image)
        assert image["y"] + image["height"] <= DESKTOP["height"], (k, image)
        assert page.evaluate("([x, y]) => document.elementFromPoint(x, y)?.tagName",
                             [image["x"] + image["width"] / 2, image["y"] + image["height"] / 2]) == "IMG", k
    set_slider(page, "Number of seeds", 2)


def test_a_presets_changed_note_is_beside_the_picker(toy_page):  # noqa: F811
    """Issue 18: the "Changed:" note sat at the bottom of the controls column, off screen."""
    page = toy_page
    _explore(page)
    page.locator("#presets").get_by_text("Reversed guidance", exact=True).click()
    wait_for_text(page, "#changed-note", r"Changed:")
    note, presets = _in_window(page, "#changed-note"), _box(page, "#presets")
    assert 0 <= note["y"] - (presets["y"] + presets["height"]) <= 250, (note, presets)
    screenshot(page, "layout-3-preset-note.png")
    page.locator("#presets").get_by_text("Standard CFG", exact=True).click()
    wait_for_text(page, "#changed-note", r"Changed:")


def test_a_png_dropped_on_the_gallery_restores_its_settings(toy_page, tmp_path):  # noqa: F811
    """Issue 18: a PNG dropped anywhere but the file box in the collapsed "Links and saved settings" did nothing."""
    from PIL import Image

    from pipeline import GenerationRequest
    from pipeline.metadata import save_png

    page = toy_page
    _explore(page)
    request = GenerationRequest(prompt="blue square", steps=9, seeds=(7,), width=256, height=256, guidance_scale=3.5)
    png = save_png(Image.new("RGB", (64, 64), "blue"), tmp_path / "dropped.png", request, seed=7)
    data = base64.b64encode(png.read_bytes()).decode()
    page.evaluate(
        """([data, name]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const files = new DataTransfer();
            files.items.add(new File([bytes], name, {type: 'image/png'}));
            const target = document.querySelector('#images');
            const at = target.getBoundingClientRect();
            for (const type of ['dragenter', 'dragover', 'drop']) {
                target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: files,
                    clientX: at.x + 20, clientY: at.y + 20}));
            }
        }""",
        [data, png.name],
    )
    wait_for_text(page, "#changed-note", r"Restored the settings of dropped\.png")
    assert block(page, "Prompt").locator("textarea").input_value() == "blue square"
    assert block(page, "Seed").locator("input").input_value() == "7"
    assert block(page, "Steps").locator("input[type=number]").input_value() == "9"
    _in_window(page, "#changed-note")
    screenshot(page, "layout-4-dropped-png.png")
    set_text(page, "Prompt", "red circle")


def test_on_a_phone_the_prompt_and_generate_come_first(toy_page):  # noqa: F811
    """Issue 18: on a phone Generate was 2,290 px down the page, below every control."""
    page = toy_page
    page.get_by_role("tab", name="Explore").click()
    page.set_viewport_size(PHONE)
    page.evaluate("() => window.scrollTo(0, 0)")
    try:
        generate = page.get_by_role("button", name="Generate", exact=True)
        generate.wait_for()
        button = generate.bounding_box()
        assert button["y"] + button["height"] <= PHONE["height"], button  # on the first screen
        prompt = block(page, "Prompt").bounding_box()
        assert prompt["y"] + prompt["height"] <= button["y"], (prompt, button)  # the prompt just above it
        images, mode = _box(page, "#images"), block(page, "Guidance mode").bounding_box()
        assert button["y"] < images["y"] < mode["y"], (images, mode)  # the run's images before the other controls
        screenshot(page, "layout-5-phone.png")
    finally:
        page.set_viewport_size(DESKTOP)


def test_sweep_captions_are_whole_and_the_grid_has_labels(toy_page):  # noqa: F811
    """Issue 18: sweep captions were cut to "Guidance …"."""
    page = toy_page
    page.set_viewport_size(DESKTOP)
    page.get_by_role("tab", name="X/Y sweep").click()
    set_text(page, "X values", "1, 7.5")
    y_axis = block(page, "Y axis").locator("input")
    y_axis.click()
    page.get_by_role("option", name="Guidance mode", exact=True).click()
    set_text(page, "Y values", "cfg, cond_only")
    page.get_by_role("button", name="Run sweep", exact=True).click()
    wait_for_text(page, "#sweep-status", r"Done:", timeout=TIMEOUT_MS)
    page.wait_for_function("() => document.querySelectorAll('#sweep-cells .caption-label').length === 4")
    labels = page.locator("#sweep-cells .caption-label")
    texts = [t.strip() for t in labels.all_inner_texts()]
    assert texts == ["Guidance scale 1 · Guidance mode Standard CFG", "Guidance scale 7.5 · Guidance mode Standard CFG",
                     "Guidance scale 1 · Guidance mode Conditional only",
                     "Guidance scale 7.5 · Guidance mode Conditional only"], texts
    for k in range(4):  # nothing cut: no ellipsis, no overflow, inside its cell
        cut = labels.nth(k).evaluate("e => e.scrollWidth > e.clientWidth || e.scrollHeight > e.clientHeight")
        assert not cut, texts[k]
        label, cell = labels.nth(k).bounding_box(), page.locator("#sweep-cells .thumbnail-lg").nth(k).bounding_box()
        assert label["x"] >= cell["x"] - 1 and label["x"] + label["width"] <= cell["x"] + cell["width"] + 1, (label, cell)
    page.locator("#sweep-grid img").wait_for()
    screenshot(page, "layout-6-sweep.png")
    page.get_by_role("tab", name="Explore").click()


def test_a_new_upload_on_the_invert_tab_clears_the_last_images_results(toy_page, tmp_path):  # noqa: F811
    """Issue 18: after a new upload the previous image's error curve and table stayed on screen. The recovered noise
    gets a caption saying what it shows."""
    from PIL import Image

    page = toy_page
    page.set_viewport_size(DESKTOP)
    page.get_by_role("tab", name="Invert").click()
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    Image.new("RGB", (64, 64), "red").save(first)
    Image.new("RGB", (64, 64), "blue").save(second)
    upload = page.locator("#invert-image input[type=file]")
    upload.set_input_files(str(first))
    block(page, "Inversion steps").locator("input[type=number]").fill("4")
    page.get_by_role("button", name="Invert", exact=True).click()
    wait_for_text(page, "#invert-result", r"PSNR")
    wait_for_text(page, "#invert-noise-caption", r"Recovered noise is x_T .* DDIM inversion is deterministic")
    set_text(page, "Curve steps", "2, 4")
    page.get_by_role("button", name="Error curve", exact=True).click()
    wait_for_text(page, "#curve-status", r"Error curve: done")
    table = page.locator(".table-wrap[aria-label='Reconstruction error table']")
    assert "7.5" in table.inner_text()  # its rows (the headers hold no digits)
    screenshot(page, "layout-7-invert-before-upload.png")

    if not upload.count():  # the image box shows the last image: remove it, as a person does, then upload
        page.locator("#invert-image").get_by_label("Clear").first.click()
    upload.set_input_files(str(second))
    wait_for_text(page, "#curve-status", r"Press Error curve")
    wait_for_text(page, "#invert-result", r"Upload an image and press Invert")
    page.wait_for_function("() => !document.querySelector('#invert-noise-caption').innerText.trim()")
    assert "PSNR" not in page.locator("#invert-result").inner_text()
    assert not page.locator("#invert-noise img").count()
    page.wait_for_function(  # the last image's rows are gone: only the headers, which hold no digits, are left
        "() => !/\\d/.test(document.querySelector(\".table-wrap[aria-label='Reconstruction error table']\").innerText)")
    screenshot(page, "layout-8-invert-after-upload.png")
    page.get_by_role("tab", name="Explore").click()
