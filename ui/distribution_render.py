"""Pictures and tables of the Distribution tab, drawn from `pipeline.distribution.ScaleResult`s.

The figures are drawn with PIL (matplotlib is not a dependency, and a PIL image renders the same offline, in
every browser and in the PNG a learner downloads). The curves are pandas frames for `gr.LinePlot`. No gradio
here and no sampling: only the library's numbers, laid out to be read.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from pipeline.distribution import ScaleResult, marginal
from pipeline.models.toy import COLOURS, ITEMS, VOCABULARY

# Each target's look, the same in every panel and in the legend: (label, colour, dashed).
TARGETS = {
    "data": ("data p(x|c)", (0, 0, 0), False),
    "model": ("model p_a(x|c)", (90, 90, 90), True),
    "tilted": ("tilted p_a(x|c)^s p(x)^(1-s)", (170, 90, 210), False),
}
# Drawn in this order, each thinner than the one before, so that coinciding targets all stay visible.
TARGET_ORDER = (("tilted", 5), ("model", 3), ("data", 2))
PANEL_TITLES = {"size": "size", "colour": "colour", "shape": "shape", "vertical": "place: top/bottom",
                "horizontal": "place: left/right"}
PLAIN_BAR = (70, 120, 180)
BACKGROUND = (255, 255, 255)
GRID = (225, 225, 225)
WIDTH = 760  # px: shown at about its own size in the results column on a desktop
MARGINAL_ROWS = (("size", "colour", "shape"), ("vertical", "horizontal"))
MARGIN_LEFT = 44
FONT = 15
# The 96 items, grouped so the histogram reads: colour (outer), then shape, then size, then place.
ITEM_ORDER = sorted(range(len(ITEMS)), key=lambda n: (
    VOCABULARY["colour"].index(ITEMS[n].colour), VOCABULARY["shape"].index(ITEMS[n].shape),
    VOCABULARY["size"].index(ITEMS[n].size), ITEMS[n].vertical != "top", ITEMS[n].horizontal != "left"))
MOSAIC_COLUMNS = 8
BAR_WIDTH = 6  # px per item: 96 of them, with the gaps between groups, fit in WIDTH
HISTOGRAM_LEFT, HISTOGRAM_TOP, HISTOGRAM_BELOW = 50, 10, 46
SHAPE_GAP, COLOUR_GAP = 5, 14

METRIC_COLUMNS = {  # ExactStats.metrics key -> the table's column
    "precision": "precision", "tv_data": "TV to data", "tv_model": "TV to model", "tv_tilted": "TV to tilted",
    "noise_band": "noise band: model", "noise_band_data": "noise band: data",
    "noise_band_tilted": "noise band: tilted", "entropy": "entropy (nats)", "effective_items": "effective items",
    "median_distance": "median distance", "off_data": "off the data",
}
PROXY_COLUMNS = {  # ScaleResult.proxies key -> the table's column: proxies, and said so (the library computes no
    # MS-SSIM: nothing in requirements.txt does)
    "pairwise_latent_distance": "proxy: mean pairwise latent distance", "vendi": "proxy: Vendi score",
}
TV_SERIES = {"tv_data": "to data", "tv_model": "to model", "tv_tilted": "to tilted", "noise_band": "noise band"}


def _font(size: int = FONT) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def value_text(value: Any) -> str:
    """An axis value as the page shows it: 7.5, "0–0.4" (an interval), "ddim eta 1" (a scheduler and eta)."""
    if isinstance(value, tuple) and len(value) == 2:
        first, second = value
        return f"{first} eta {second:g}" if isinstance(first, str) else f"{first:g}–{second:g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def result_name(result: ScaleResult, axis_label: str = "") -> str:
    """"s = 7.5" or "s = 7.5 · Interval 0.4": which result this is, as captions and tables say it."""
    name = f"s = {result.scale:g}"
    if result.axis_value is not None:
        name += f" · {axis_label or 'axis'} {value_text(result.axis_value)}"
    return name


def _hline(draw: ImageDraw.ImageDraw, x0: float, x1: float, y: float, colour, dashed: bool, width: int = 2) -> None:
    if not dashed:
        draw.line([(x0, y), (x1, y)], fill=colour, width=width)
        return
    x = x0
    while x < x1:
        draw.line([(x, y), (min(x + 5, x1), y)], fill=colour, width=width)
        x += 9


def _targets(draw: ImageDraw.ImageDraw, x0: float, x1: float, ys: dict[str, float]) -> None:
    """Each target's line at its height over one bar, the widest first."""
    for key, width in TARGET_ORDER:
        if key in ys:
            _, colour, dashed = TARGETS[key]
            _hline(draw, x0, x1, ys[key], colour, dashed, width=width)


def _bar_colour(attribute: str, value: str) -> tuple[int, int, int]:
    return COLOURS[value] if attribute == "colour" else PLAIN_BAR


def legend(draw: ImageDraw.ImageDraw, x: int, y: int, targets: Sequence[str]) -> None:
    """The key, one entry to a line: the bar, then each target's line."""
    font = _font(FONT - 1)
    draw.rectangle([x, y + 3, x + 26, y + 15], fill=PLAIN_BAR)
    draw.text((x + 34, y), "sampled share (bars)", fill="black", font=font)
    for k, key in enumerate(targets, start=1):
        label, colour, dashed = TARGETS[key]
        _hline(draw, x, x + 26, y + 22 * k + 9, colour, dashed, width=dict(TARGET_ORDER)[key])
        draw.text((x + 34, y + 22 * k), f"target: {label}", fill="black", font=font)


def marginal_rows(result: ScaleResult, row_height: int = 190) -> Image.Image:
    """One panel per attribute, in two rows (size, colour, shape; then place), with the legend beside the
    second: the sampled share of each value (bars) against each target's (lines).

    The view a learner reads fastest: "CFG at 5 makes 66% of the shapes big; the prompt never said big, and
    the data and the tilted target keep it at 50%". The y axis is fixed at 0 to 1, so panels compare across
    scales."""
    exact = result.exact
    sampled = exact.counts / max(1, int(exact.counts.sum()))
    targets = {key: p for key, p in exact.targets.items() if key in TARGETS}
    image = Image.new("RGB", (WIDTH, 2 * row_height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    unit = (WIDTH - MARGIN_LEFT - 8) / sum(len(VOCABULARY[a]) + 1 for a in MARGINAL_ROWS[0])
    for row, attributes in enumerate(MARGINAL_ROWS):
        top = row * row_height
        width = sum(len(VOCABULARY[a]) + 1 for a in attributes) * unit
        _axis(draw, MARGIN_LEFT, MARGIN_LEFT + width, top + 24, top + row_height - 26)
        x = MARGIN_LEFT
        for attribute in attributes:
            x = _marginal(draw, attribute, sampled, targets, x, unit, top + 24, top + row_height - 26)
    legend(draw, int(MARGIN_LEFT + 7 * unit), row_height + 30, list(targets))
    return image


def _axis(draw: ImageDraw.ImageDraw, x0: float, x1: float, top: float, bottom: float) -> None:
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - tick * (bottom - top)
        draw.line([(x0, y), (x1, y)], fill=GRID, width=1)
        draw.text((x0 - 6, y), f"{tick:g}", fill="gray", font=_font(FONT - 2), anchor="rm")


def _marginal(draw: ImageDraw.ImageDraw, attribute: str, sampled, targets: dict, x: float, unit: float,
              top: float, bottom: float) -> float:
    """One attribute's panel from `x`; returns where the next begins."""
    small, plot_h = _font(FONT - 2), bottom - top
    values = VOCABULARY[attribute]
    panel_w = (len(values) + 1) * unit
    draw.text((x + panel_w / 2, top - 22), PANEL_TITLES[attribute], fill="black", font=_font(), anchor="mt")
    shares = marginal(sampled, attribute)
    wanted = {key: marginal(p, attribute) for key, p in targets.items()}
    bar_w = unit * 0.7
    for k, value in enumerate(values):
        x0 = x + unit * (0.5 + k) + (unit - bar_w) / 2
        share = shares[value]
        draw.rectangle([x0, bottom - share * plot_h, x0 + bar_w, bottom], fill=_bar_colour(attribute, value))
        _targets(draw, x0 - 3, x0 + bar_w + 3, {key: bottom - t[value] * plot_h for key, t in wanted.items()})
        # the share above the bar and above any target line near it, so no line crosses the number
        label_y = min([bottom - share * plot_h] + [bottom - t[value] * plot_h for t in wanted.values()
                                                   if abs(t[value] - share) * plot_h < 16])
        draw.text((x0 + bar_w / 2, label_y - 4), f"{share:.2f}", fill="black", font=small, anchor="mb")
        draw.text((x0 + bar_w / 2, bottom + 4), value, fill="black", font=small, anchor="mt")
    draw.line([(x + panel_w - unit * 0.25, top), (x + panel_w - unit * 0.25, bottom)], fill=(200, 200, 200))
    return x + panel_w


def _glyph(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)


def items_histogram(result: ScaleResult, height: int = 260) -> Image.Image:
    """The 96 items as bars (share of seeds nearest each), grouped by colour, then shape, then size (small,
    lighter, then big), then place (top-left, top-right, bottom-left, bottom-right); the targets as lines over
    each bar."""
    exact = result.exact
    sampled = exact.counts / max(1, int(exact.counts.sum()))
    targets = {key: p for key, p in exact.targets.items() if key in TARGETS}
    top_value = max([float(sampled.max())] + [float(p.max()) for p in targets.values()] + [1e-9]) * 1.12
    image = Image.new("RGB", (WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    bottom = height - HISTOGRAM_BELOW
    plot_h = bottom - HISTOGRAM_TOP
    step, tick = _nice_step(top_value), 0.0
    while tick <= top_value:
        y = bottom - tick / top_value * plot_h
        draw.line([(MARGIN_LEFT, y), (WIDTH - 8, y)], fill=GRID, width=1)
        draw.text((MARGIN_LEFT - 6, y), f"{tick:.2g}", fill="gray", font=_font(FONT - 2), anchor="rm")
        tick += step
    for position, (n, x) in enumerate(item_columns().items()):
        item = ITEMS[n]
        colour = COLOURS[item.colour]
        fill = colour if item.size == "big" else tuple(int(c * 0.55 + 255 * 0.45) for c in colour)
        draw.rectangle([x, bottom - sampled[n] / top_value * plot_h, x + BAR_WIDTH - 2, bottom], fill=fill)
        # a target of 0 is left out here (the marginals show it): 96 lines along the axis would hide small bars
        _targets(draw, x - 1, x + BAR_WIDTH - 1, {key: bottom - p[n] / top_value * plot_h
                                                  for key, p in targets.items() if p[n] > 0})
        if position % 8 == 0:  # under each shape group (small, then big), its glyph
            _glyph(draw, item.shape, x + 4 * BAR_WIDTH - 1, bottom + 12, 6, colour)
        if position % 24 == 0:
            draw.text((x + 12 * BAR_WIDTH + SHAPE_GAP, bottom + 26), item.colour, fill="black", font=_font(),
                      anchor="mt")
    return image


def item_columns(left: int = HISTOGRAM_LEFT) -> dict[int, int]:
    """Item index (toy.ITEMS order) -> the x of its bar's left edge, in ITEM_ORDER: a gap between shapes and a
    wider one between colours."""
    columns, x = {}, left
    for position, n in enumerate(ITEM_ORDER):
        if position and position % 24 == 0:
            x += COLOUR_GAP
        elif position and position % 8 == 0:
            x += SHAPE_GAP
        columns[n] = x
        x += BAR_WIDTH
    return columns


def _nice_step(top: float) -> float:
    raw = top / 4
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def headline(result: ScaleResult, axis_label: str = "") -> tuple[str, str]:
    """(which result, its main numbers): the figure's two title lines."""
    m = result.exact.metrics
    return (f"{result_name(result, axis_label)} · {result.n_seeds} seeds",
            f"precision {m['precision']:.2f} · TV to model {m['tv_model']:.3f} (noise band {m['noise_band']:.3f})"
            f" · effective items {m['effective_items']:.1f}")


def scale_figure(result: ScaleResult, axis_label: str = "") -> Image.Image:
    """One result of the toy world: two title lines, the marginals with the legend (first: read fastest),
    then the 96-item histogram."""
    marginals, histogram = marginal_rows(result), items_histogram(result)
    head = 50
    image = Image.new("RGB", (WIDTH, head + marginals.height + 26 + histogram.height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    title, numbers = headline(result, axis_label)
    draw.text((10, 6), title, fill="black", font=_font(FONT + 3))
    draw.text((10, 28), numbers, fill="black", font=_font(FONT))
    image.paste(marginals, (0, head))
    y = head + marginals.height
    draw.text((10, y + 4), "All 96 items: lighter small, darker big; each at top-left, top-right, bottom-left, "
              "bottom-right", fill="black", font=_font(FONT - 1))
    image.paste(histogram, (0, y + 26))
    return image


def mosaic(result: ScaleResult, columns: int = MOSAIC_COLUMNS) -> Image.Image:
    """The thumbnails in seed order, `columns` to a row: a real model's samples, looked at rather than counted."""
    thumbs = result.thumbnails
    if not thumbs:
        return Image.new("RGB", (64, 64), BACKGROUND)
    w, h = max(t.width for t in thumbs), max(t.height for t in thumbs)
    cols = min(columns, len(thumbs))
    rows = math.ceil(len(thumbs) / cols)
    image = Image.new("RGB", (cols * (w + 2), rows * (h + 2)), BACKGROUND)
    for k, thumb in enumerate(thumbs):
        image.paste(thumb.convert("RGB"), ((k % cols) * (w + 2), (k // cols) * (h + 2)))
    return image


def caption(result: ScaleResult, axis_label: str = "") -> str:
    name = result_name(result, axis_label)
    if result.exact is not None:
        m = result.exact.metrics
        return f"{name}: precision {m['precision']:.2f}, TV to model {m['tv_model']:.3f}"
    shown = len(result.thumbnails)
    more = f" (first {shown} of {result.n_seeds} seeds)" if shown < result.n_seeds else ""
    return f"{name}{more}"


def table(results: Sequence[ScaleResult], axis_label: str = "") -> pd.DataFrame:
    """One row per result: the exact numbers (toy) or the proxies (real models), in the order they came."""
    rows = []
    for r in results:
        row = {"result": result_name(r, axis_label), "seeds": r.n_seeds}
        if r.exact is not None:
            row.update({column: round(float(r.exact.metrics[key]), 4) for key, column in METRIC_COLUMNS.items()
                        if key in r.exact.metrics})
        for key, value in (r.proxies or {}).items():
            row[PROXY_COLUMNS.get(key, f"proxy: {key}")] = round(float(value), 4)
        rows.append(row)
    return pd.DataFrame(rows)


def noise_note(result: ScaleResult) -> str:
    """How to read the noise band, with this run's numbers."""
    m = result.exact.metrics
    n = result.n_seeds
    return (f"**How to read the noise band:** even a perfect sampler of the model's target pₐ(x|c), drawing "
            f"{n} seeds, lands at a total variation (TV) of up to **{m['noise_band']:.3f}** from it (95% of the "
            f"time), only because {n} seeds are few. A TV below the band is as good as exact; above it, the "
            f"sampler really differs (the table gives each target's own band: a narrower target has a narrower "
            f"one). A share in the marginals moves by about ±{1 / math.sqrt(n):.2f} "
            f"(two standard errors at 50%) from seed noise alone. All scales use the same seeds, so a change "
            "between scales is guidance, not a fresh draw.")


def curve_frames(results: Sequence[ScaleResult], scales: Sequence[float], axis_values: Sequence[Any] = (),
                 axis_label: str = "", metrics: Sequence[str] = ()) -> dict[str, pd.DataFrame]:
    """Per plot, a frame (scale, value, series), every planned point listed from the start with the value
    empty until it is measured: the page fixes a plot's colour legend from the first frame it draws, and an
    empty frame gives Vega "Infinite extent" warnings.

    Toy: plots "precision", "entropy" and "tv" (to each target, and the noise band). Real models: one plot per
    proxy in `metrics`."""
    values = list(axis_values) or [None]

    def series(plot: str, label: str, value) -> str:
        """"to model", "Adherence 0.3", "to model, Adherence 0.3"; the plot's name for its only line."""
        parts = ([label] if label else []) + ([f"{axis_label} {value_text(value)}"] if value is not None else [])
        return ", ".join(parts) or plot

    measured: dict[tuple[str, Any, float], float] = {}
    for r in results:
        numbers = dict(r.exact.metrics) if r.exact is not None else dict(r.proxies or {})
        for key, number in numbers.items():
            measured[(key, r.axis_value, float(r.scale))] = float(number)
    plots = {}
    keys = {"precision": {"precision": ""}, "entropy": {"entropy": ""}, "tv": TV_SERIES} if not metrics else {
        key: {key: PROXY_COLUMNS.get(key, key).removeprefix("proxy: ")} for key in metrics}
    for plot, members in keys.items():
        points = []
        for key, label in members.items():
            for value in values:
                for s in scales:
                    points.append((float(s), measured.get((key, value, float(s))), series(plot, label, value)))
        plots[plot] = pd.DataFrame(points, columns=["scale", "value", "series"]).astype(
            {"scale": "float64", "value": "float64", "series": "object"})
    return plots
