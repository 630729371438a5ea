"""X/Y sweeps: one base request, two axes of values, one labelled grid image.

Cells that share a scheduler, step count, size and eta run as one batch (`denoise_batch`): their UNet
passes go through one UNet call per step. Each cell keeps one generator for its seed, so its image is the
one the same settings give when run alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from PIL import Image, ImageDraw, ImageFont

from .loop import denoise_batch
from .previews import final_images
from .request import GenerationRequest, RequestError

AXES: tuple[str, ...] = ("seed", "guidance_scale", "mode", "scheduler", "eta", "guidance_rescale", "interval_start")
MAX_CELLS = 64
MAX_BATCH = 8  # images per UNet batch: a whole 64-cell grid of SDXL at once would not fit on most GPUs
NUMERIC_AXES = {"seed": int, "guidance_scale": float, "eta": float, "guidance_rescale": float, "interval_start": float}
CELL_GAP = 6  # px of background between neighbouring cells, so that they do not read as one picture
CELL_FRAME = (160, 160, 160)  # a thin frame round each cell: white-on-white neighbours stay apart too


@dataclass(frozen=True, slots=True)
class Axis:
    name: str
    values: tuple[Any, ...]

    @classmethod
    def parse(cls, name: str, text: str) -> Axis:
        """An axis from a comma-separated list, e.g. `Axis.parse("guidance_scale", "1, 3, 7.5")`."""
        if name not in AXES:
            raise RequestError("sweep_axis", f"must be one of {', '.join(AXES)}, got {name!r}")
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise RequestError(name, "the sweep needs at least one value on this axis")
        convert = NUMERIC_AXES.get(name, str)
        try:
            return cls(name, tuple(convert(item) for item in items))
        except ValueError:
            raise RequestError(name, f"sweep values must be {convert.__name__}s, got {text!r}") from None


@dataclass(frozen=True, slots=True)
class Cell:
    index: int
    x: int  # column
    y: int  # row
    request: GenerationRequest  # one seed


@dataclass(frozen=True, slots=True)
class SweepEvent:
    """Progress of a sweep: the step of the batch running now, and the cells finished so far."""

    cells_done: int
    cells_total: int
    step: int
    total_steps: int
    finished: tuple[tuple[Cell, Image.Image], ...] = ()  # cells finished at this event, with their images
    grid: Image.Image | None = None  # the last event only


def _with(base: GenerationRequest, name: str, value: Any) -> GenerationRequest:
    if name == "seed":
        return dataclasses.replace(base, seeds=(value,), decompose_seed=None)
    if name == "interval_start":
        return dataclasses.replace(base, guidance_interval=(value, base.guidance_interval[1]))
    return dataclasses.replace(base, **{name: value})


def sweep_cells(base: GenerationRequest, x: Axis, y: Axis) -> list[Cell]:
    """Every (x, y) combination as a one-seed request; a bad value raises naming its field."""
    if x.name == y.name:
        raise RequestError("sweep_axis", f"the two axes must differ, both are {x.name!r}")
    count = len(x.values) * len(y.values)
    if count > MAX_CELLS:
        raise RequestError("sweep", f"at most {MAX_CELLS} cells, got {len(x.values)} x {len(y.values)} = {count}")
    one_seed = dataclasses.replace(base, seeds=base.seeds[:1], decompose_seed=None)
    cells = []
    for row, y_value in enumerate(y.values):
        for col, x_value in enumerate(x.values):
            request = _with(_with(one_seed, x.name, x_value), y.name, y_value)
            cells.append(Cell(len(cells), col, row, request))
    return cells


def batches(cells: list[Cell], max_batch: int = MAX_BATCH) -> list[list[Cell]]:
    """Cells grouped by what one batch must share, in grid order, at most `max_batch` images each."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        r = cell.request
        groups.setdefault((r.scheduler, r.steps, r.width, r.height, r.eta), []).append(cell)
    return [group[i : i + max_batch] for group in groups.values() for i in range(0, len(group), max_batch)]


def run_sweep(pipe, base: GenerationRequest, x: Axis, y: Axis, max_batch: int = MAX_BATCH,
              title: Callable[[str], str] = str, shown: Callable[[str, Any], str] | None = None) -> Iterator[SweepEvent]:
    """Run every cell, batch by batch, yielding progress each step; the last event carries the grid, labelled by
    `title` and `shown` (see `grid_image`)."""
    cells = sweep_cells(base, x, y)
    images: dict[int, Image.Image] = {}
    for batch in batches(cells, max_batch):
        events = None
        for events in denoise_batch(pipe, [cell.request for cell in batch]):
            yield SweepEvent(len(images), len(cells), events[0].step, events[0].total)
        finished = []
        for cell, event in zip(batch, events):
            images[cell.index] = final_images(pipe, event.latents)[0]
            finished.append((cell, images[cell.index]))
        last = len(images) == len(cells)
        grid = grid_image([images[c.index] for c in cells], x, y, title=title, shown=shown) if last else None
        yield SweepEvent(len(images), len(cells), events[0].total, events[0].total, tuple(finished), grid)


def _value(name: str, value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_image(images: list[Image.Image], x: Axis, y: Axis, font_size: int = 16, title: Callable[[str], str] = str,
               shown: Callable[[str, Any], str] | None = None) -> Image.Image:
    """Images in rows (y) and columns (x), `CELL_GAP` apart and each framed. The x axis's title heads the columns
    and each column shows its value; the y axis's title sits in the corner above the row values.

    `title(axis name)` and `shown(axis name, value)` give the words drawn: a page passes its controls' labels
    ("Guidance scale", "Standard CFG"); by default the axis names and values themselves.
    """
    shown = shown or _value
    x_title, y_title = title(x.name), title(y.name)
    x_texts, y_texts = [shown(x.name, v) for v in x.values], [shown(y.name, v) for v in y.values]
    font = ImageFont.load_default(size=font_size)
    w, h = images[0].size
    pad, gap = font_size // 2, CELL_GAP
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = int(max(measure.textlength(text, font=font) for text in [*y_texts, y_title])) + 2 * pad
    top = 2 * (font_size + pad) + pad
    cols, rows = len(x.values), len(y.values)
    # Narrow cells (small images, long values) widen to fit their label; each cell is an image and its gap.
    cell_w = max(w, int(max(measure.textlength(text, font=font) for text in x_texts)) + 2 * pad) + gap
    cell_h = h + gap
    grid = Image.new("RGB", (left + cell_w * cols, top + cell_h * rows), "white")
    draw = ImageDraw.Draw(grid)
    name_x = left + (cell_w * cols - draw.textlength(x_title, font=font)) / 2
    draw.text((max(left, name_x), pad), x_title, fill="black", font=font)
    draw.text((pad, pad + font_size + pad), y_title, fill="gray", font=font)
    for col, text in enumerate(x_texts):
        draw.text((left + col * cell_w + (cell_w - draw.textlength(text, font=font)) / 2, 2 * pad + font_size), text,
                  fill="black", font=font)
    for row, text in enumerate(y_texts):
        draw.text((pad, top + row * cell_h + (cell_h - font_size) / 2), text, fill="black", font=font)
    for i, image in enumerate(images):
        col, row = i % cols, i // cols
        at = (left + col * cell_w + (cell_w - w) // 2, top + row * cell_h + gap // 2)
        draw.rectangle((at[0] - 1, at[1] - 1, at[0] + w, at[1] + h), outline=CELL_FRAME)
        grid.paste(image, at)
    return grid
