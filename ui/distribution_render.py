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

from pipeline.distribution import ATTRIBUTES, ScaleResult, marginal
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
WIDTH = 1120
FONT = 15
# The 96 items, grouped so the histogram reads: colour (outer), then shape, then size, then place.
ITEM_ORDER = sorted(range(len(ITEMS)), key=lambda n: (
    VOCABULARY["colour"].index(ITEMS[n].colour), VOCABULARY["shape"].index(ITEMS[n].shape),
    VOCABULARY["size"].index(ITEMS[n].size), ITEMS[n].vertical != "top", ITEMS[n].horizontal != "left"))
MOSAIC_COLUMNS = 8
BAR_WIDTH = 10  # px per item; 96 of them with the gaps fill WIDTH
HISTOGRAM_LEFT, HISTOGRAM_TOP, HISTOGRAM_BELOW = 50, 10, 56

METRIC_COLUMNS = {  # ExactStats.metrics key -> the table's column
    "precision": "precision", "tv_data": "TV to data", "tv_model": "TV to model", "tv_tilted": "TV to tilted",
    "noise_band": "noise band (TV)", "entropy": "entropy (nats)", "effective_items": "effective items",
    "median_distance": "median distance", "off_data": "off the data",
}
PROXY_COLUMNS = {  # ScaleResult.proxies key -> the table's column: proxies, and said so
    "pairwise_latent_distance": "proxy: mean pairwise latent distance", "vendi": "proxy: Vendi score",
    "ms_ssim": "proxy: mean pairwise MS-SSIM",
}
CURVES = ("precision", "entropy", "tv")  # the toy's three plots
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
    font = _font(FONT - 1)
    draw.rectangle([x, y + 3, x + 14, y + 15], fill=PLAIN_BAR)
    draw.text((x + 20, y), "sampled share", fill="black", font=font)
    x += 40 + int(draw.textlength("sampled share", font=font))
    for key in targets:
        label, colour, dashed = TARGETS[key]
        _hline(draw, x, x + 26, y + 9, colour, dashed, width=dict(TARGET_ORDER)[key])
        draw.text((x + 32, y), f"target: {label}", fill="black", font=font)
        x += 60 + int(draw.textlength(f"target: {label}", font=font))


def marginals_panel(result: ScaleResult, height: int = 250) -> Image.Image:
    """One panel per attribute: the sampled share of each value (bars) against each target's (lines).

    The view a learner reads fastest: "CFG at 5 makes 66% of the shapes big; the prompt never said big, and
    the data and the tilted target keep it at 50%". The y axis is fixed at 0 to 1, so panels compare across
    scales."""
    exact = result.exact
    total = max(1, int(exact.counts.sum()))
    sampled = exact.counts / total
    image = Image.new("RGB", (WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = _font(), _font(FONT - 2)
    left, top, bottom = 44, 26, height - 26
    plot_h = bottom - top
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - tick * plot_h
        draw.line([(left, y), (WIDTH - 8, y)], fill=GRID, width=1)
        draw.text((left - 6, y), f"{tick:g}", fill="gray", font=small, anchor="rm")
    widths = {a: len(VOCABULARY[a]) + 1 for a in ATTRIBUTES}
    unit = (WIDTH - left - 8) / sum(widths.values())
    x = left
    for attribute in ATTRIBUTES:
        panel_w = widths[attribute] * unit
        draw.text((x + panel_w / 2, 4), PANEL_TITLES[attribute], fill="black", font=font, anchor="mt")
        shares = marginal(sampled, attribute)
        targets = {key: marginal(p, attribute) for key, p in exact.targets.items() if key in TARGETS}
        bar_w = unit * 0.7
        for k, value in enumerate(VOCABULARY[attribute]):
            x0 = x + unit * (0.5 + k) + (unit - bar_w) / 2
            share = shares[value]
            draw.rectangle([x0, bottom - share * plot_h, x0 + bar_w, bottom], fill=_bar_colour(attribute, value))
            _targets(draw, x0 - 3, x0 + bar_w + 3, {key: bottom - t[value] * plot_h for key, t in targets.items()})
            # the share above the bar and above any target line near it, so no line crosses the number
            label_y = min([bottom - share * plot_h] + [bottom - t[value] * plot_h for t in targets.values()
                                                       if abs(t[value] - share) * plot_h < 16])
            draw.text((x0 + bar_w / 2, label_y - 4), f"{share:.2f}", fill="black", font=small, anchor="mb")
            draw.text((x0 + bar_w / 2, bottom + 4), value, fill="black", font=small, anchor="mt")
        x += panel_w
        draw.line([(x - unit * 0.25, top), (x - unit * 0.25, bottom)], fill=(200, 200, 200), width=1)
    return image


def _glyph(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)


def items_histogram(result: ScaleResult, height: int = 300) -> Image.Image:
    """The 96 items as bars (share of seeds nearest each), grouped by colour, then shape, then size (small,
    big), then place (top-left, top-right, bottom-left, bottom-right); the targets as ticks over each bar."""
    exact = result.exact
    total = max(1, int(exact.counts.sum()))
    sampled = exact.counts / total
    targets = {key: p for key, p in exact.targets.items() if key in TARGETS}
    top_value = max([float(sampled.max())] + [float(p.max()) for p in targets.values()] + [1e-9]) * 1.12
    image = Image.new("RGB", (WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = _font(), _font(FONT - 2)
    left, top, bottom = 44, HISTOGRAM_TOP, height - HISTOGRAM_BELOW
    plot_h = bottom - top
    step = _nice_step(top_value)
    tick = 0.0
    while tick <= top_value:
        y = bottom - tick / top_value * plot_h
        draw.line([(left, y), (WIDTH - 8, y)], fill=GRID, width=1)
        draw.text((left - 6, y), f"{tick:.2g}", fill="gray", font=small, anchor="rm")
        tick += step
    bar_w, shape_gap = BAR_WIDTH, 6
    for position, (n, x) in enumerate(item_columns().items()):
        item = ITEMS[n]
        fill = COLOURS[item.colour] if item.size == "big" else tuple(int(c * 0.55 + 255 * 0.45) for c in COLOURS[item.colour])
        draw.rectangle([x, bottom - sampled[n] / top_value * plot_h, x + bar_w - 2, bottom], fill=fill)
        # a target of 0 is left out here (the marginals show it): 96 lines along the axis would hide small bars
        _targets(draw, x - 1, x + bar_w - 1, {key: bottom - p[n] / top_value * plot_h for key, p in targets.items()
                                              if p[n] > 0})
        if position % 8 == 0:  # under each shape group: its glyph, and "small | big"
            _glyph(draw, item.shape, x + 4 * bar_w - 1, bottom + 13, 6, COLOURS[item.colour])
            draw.text((x + 2 * bar_w - 1, bottom + 22), "small", fill="gray", font=_font(FONT - 4), anchor="mt")
            draw.text((x + 6 * bar_w - 1, bottom + 22), "big", fill="gray", font=_font(FONT - 4), anchor="mt")
        if position % 24 == 0:
            draw.text((x + 12 * bar_w + shape_gap, bottom + 38), item.colour, fill="black", font=font, anchor="mt")
    return image


def item_columns(left: int = HISTOGRAM_LEFT) -> dict[int, int]:
    """Item index (toy.ITEMS order) -> the x of its bar's left edge, in ITEM_ORDER: a gap between shapes and a
    wider one between colours."""
    columns, x = {}, left
    for position, n in enumerate(ITEM_ORDER):
        if position and position % 24 == 0:
            x += 16
        elif position and position % 8 == 0:
            x += 6
        columns[n] = x
        x += BAR_WIDTH
    return columns


def _nice_step(top: float) -> float:
    raw = top / 4
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def headline(result: ScaleResult, axis_label: str = "") -> str:
    m = result.exact.metrics
    return (f"{result_name(result, axis_label)} · {result.n_seeds} seeds · precision {m['precision']:.2f} · "
            f"TV to model {m['tv_model']:.3f} (noise band {m['noise_band']:.3f}) · "
            f"effective items {m['effective_items']:.1f}")


def scale_figure(result: ScaleResult, axis_label: str = "") -> Image.Image:
    """One result of the toy world: a title line and the legend, the marginals (first: read fastest), then
    the 96-item histogram."""
    marginals, histogram = marginals_panel(result), items_histogram(result)
    head = 62
    image = Image.new("RGB", (WIDTH, head + marginals.height + 28 + histogram.height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((12, 8), headline(result, axis_label), fill="black", font=_font(FONT + 2))
    legend(draw, 12, 36, [key for key in TARGETS if key in result.exact.targets])
    image.paste(marginals, (0, head))
    y = head + marginals.height
    draw.text((12, y + 6), "Every one of the 96 items (lighter: small, darker: big; places TL, TR, BL, BR):",
              fill="black", font=_font(FONT - 1))
    image.paste(histogram, (0, y + 28))
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
        row = {"result": result_name(r, axis_label), "seeds": r.n_seeds, "seconds": round(r.seconds, 2)}
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
            f"sampler really differs. A share in the marginals moves by about ±{2 / math.sqrt(n) * 0.5:.2f} "
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

    def series(name: str, value) -> str:
        return name if value is None else (f"{axis_label} {value_text(value)}" if not name else
                                           f"{name}, {axis_label} {value_text(value)}")

    measured: dict[tuple[str, Any, float], float] = {}
    for r in results:
        numbers = dict(r.exact.metrics) if r.exact is not None else dict(r.proxies or {})
        for key, number in numbers.items():
            measured[(key, r.axis_value, float(r.scale))] = float(number)
    plots = {}
    keys = {"precision": {"precision": ""}, "entropy": {"entropy": ""}, "tv": TV_SERIES} if not metrics else {
        key: {key: ""} for key in metrics}
    for plot, members in keys.items():
        points = []
        for key, label in members.items():
            for value in values:
                for s in scales:
                    name = series(label, value) or ("s" if value is None else "")
                    points.append((float(s), measured.get((key, value, float(s))), name or plot))
        plots[plot] = pd.DataFrame(points, columns=["scale", "value", "series"]).astype(
            {"scale": "float64", "value": "float64", "series": "object"})
    return plots
