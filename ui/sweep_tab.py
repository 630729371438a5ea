"""The X/Y sweep tab: the Explore tab's settings, two axes of values, one labelled grid.

The sweep runs in the handler, batch by batch (`pipeline.sweep.run_sweep`), and streams a status line
every step and the finished cells as each batch ends. Stop works as on the Explore tab: a per-session flag,
checked between steps, and the run's own stream says where it stopped.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Iterator

import gradio as gr
from PIL import Image

from pipeline import MODES, SCHEDULERS, RequestError
from pipeline.request import GUIDANCE_SCALE_RANGE, SEED_RANGE
from pipeline.loop import plan_passes
from pipeline.sweep import AXES, MAX_CELLS, Axis, batches, run_sweep, sweep_cells

from .fields import FieldDropdown, FieldTextbox, gr_error, refused
from .controls import CONTROL_NAMES, label_of, request_from_settings
from .handlers import gpu, gpu_seconds, takes_controls
from .served import ServedGallery
from .render import shown_value

CELL_SIZE = 512  # the Cells gallery shows JPEG thumbnails; the grid PNG keeps full size
SWEEP_OUTPUTS = ("status", "grid", "cells", "run_id")

# Per axis: an example list of values (set when the axis is picked) and what the values may be.
AXIS_HINTS = {
    "seed": ("1, 2, 3, 4", f"Integers from {SEED_RANGE[0]} to {SEED_RANGE[1]}."),
    "guidance_scale": ("1, 3, 7.5, 12",
                       f"From {GUIDANCE_SCALE_RANGE[0]:g} to {GUIDANCE_SCALE_RANGE[1]:g}; 1 is no guidance."),
    "mode": ("cfg, reversed, cond_only", "Any of: " + ", ".join(MODES) + "."),
    "scheduler": (", ".join(SCHEDULERS), "Any of: " + ", ".join(SCHEDULERS) + "."),
    "eta": ("0, 0.5, 1", "From 0 to 1. Only DDIM uses it: choose DDIM in Explore, or sweep Scheduler too."),
    "guidance_rescale": ("0, 0.35, 0.7", "From 0 to 1 (Lin et al. 2023's φ)."),
    "interval_start": ("0, 0.2, 0.4", "From 0 up to the Explore tab's Interval stop: guidance is off before it."),
}
AXIS_CHOICES = [(label_of(name), name) for name in AXES]  # each axis by its Explore control's label
AXIS_OF_FIELD = {"seeds": "seed", "guidance_interval": "interval_start"}  # request field -> the axis that sets it


def cell_caption(x: Axis, y: Axis, col: int, row: int) -> str:
    """"Guidance scale 4 · Seed 2": the axes and their values by the labels the page shows, not by their ids."""
    return (f"{label_of(x.name)} {shown_value(x.name, x.values[col])} · "
            f"{label_of(y.name)} {shown_value(y.name, y.values[row])}")


def progress_line(batch: int, batches: int, step: int, steps: int, done: int, cells: int) -> str:
    return f"batch {batch}/{batches} · step {step}/{steps} · cells done {done}/{cells}"


def _thumbnail(image: Image.Image) -> Image.Image:
    small = image.copy()
    small.thumbnail((CELL_SIZE, CELL_SIZE))
    return small


class Sweeps:
    """The sweep tab's behaviour; one instance serves every session."""

    def __init__(self, handlers) -> None:
        self.handlers = handlers

    def describe_axis(self, name: str):
        """Picking an axis fills its values with an example and says what values it takes."""
        example, hint = AXIS_HINTS.get(name, ("", ""))
        return gr.update(value=example, info=f"Comma-separated. {hint}")

    def plan(self, values, x_axis: str, x_values: str, y_axis: str, y_values: str):
        """Validate everything before any model call; errors name the field they came from."""
        try:
            base = request_from_settings(dict(zip(CONTROL_NAMES, values)))
        except RequestError as exc:
            raise refused(f"Explore settings: {label_of(exc.field)}: {exc.detail}") from exc
        axes = []
        for which, name, text in (("X", x_axis, x_values), ("Y", y_axis, y_values)):
            try:
                axes.append(Axis.parse(name, text or ""))
            except RequestError as exc:
                field = f"{which} axis" if exc.field == "sweep_axis" else f"{which} values"
                raise refused(f"{field}: {exc}") from exc
        x, y = axes
        try:
            cells = sweep_cells(base, x, y)
        except RequestError as exc:
            # A value the request refuses (a scale of 100, an unknown mode) names the request's field:
            # say which of the tab's fields it came from as well.
            axis = AXIS_OF_FIELD.get(exc.field, exc.field)
            where = {"sweep_axis": "Y axis", "sweep": "X values × Y values", x.name: "X values",
                     y.name: "Y values"}.get(axis, "Explore settings")
            raise refused(f"{where}: {exc}") from exc
        remote = self.handlers.remote  # --backend ray cuts the batches so that every worker gets a share
        return base, x, y, len(cells), len(remote.sweep_batches(cells) if remote is not None else batches(cells))

    def sweep(self, *values: Any, x_axis: str = "guidance_scale", x_values: str = "", y_axis: str = "seed",
              y_values: str = "", request: gr.Request = None) -> Iterator[tuple]:
        """Stream (status, grid, cells): a status line every step, the cells as their batch ends, the grid last."""
        base, x, y, count, batch_count = self.plan(values, x_axis, x_values, y_axis, y_values)
        stop = threading.Event()
        with self.handlers.jobs.running(request, stop.set) as run_id:
            yield from self._stream(base, x, y, count, batch_count, stop, run_id)

    def stop(self, run_id: str) -> None:
        """End the sweep with this id (its stream's first update) within one step; its stream then says where
        it stopped."""
        if not self.handlers.jobs.stop(run_id):
            gr.Info("Nothing to stop: that sweep has ended (or has not started yet).")

    @staticmethod
    def _out(**updates) -> tuple:
        return tuple(updates.get(name, gr.skip()) for name in SWEEP_OUTPUTS)

    # every cell costs about what the base request costs (a mode or schedule axis changes passes a little)
    @gpu(duration=lambda self, base, x, y, count, batch_count, stop, run_id="": gpu_seconds(
        count * sum(plan_passes(base)) * len(base.seeds), base.width, base.height))
    def _stream(self, base, x: Axis, y: Axis, count: int, batch_count: int, stop: threading.Event,
                run_id: str = "") -> Iterator[tuple]:
        start = time.perf_counter()
        yield self._out(run_id=run_id,
            status=f"**Starting:** {count} cells ({len(x.values)} {label_of(x.name)} × {len(y.values)} {label_of(y.name)}) "
            f"in {batch_count} batch{'es' if batch_count > 1 else ''}, {base.steps} steps each.",
            grid=None, cells=gr.update(value=[], columns=min(max(len(x.values), 2), 4)),  # rows like the grid's
        )
        cells: dict[int, tuple[Image.Image, str]] = {}  # grid index -> (thumbnail, caption)
        batch, step, steps = 1, 0, base.steps
        remote = self.handlers.remote  # --backend ray: the batches fan out over the workers
        events = (remote.sweep(base, x, y, title=label_of, shown=shown_value) if remote is not None
                  else run_sweep(self.handlers.pipe, base, x, y, title=label_of, shown=shown_value))
        try:
            for event in events:
                step, steps = event.step, event.total_steps
                line = progress_line(batch, batch_count, step, steps, event.cells_done, event.cells_total)
                if event.grid is not None:
                    path = self._save(event.grid)
                    for cell, image in event.finished:
                        cells[cell.index] = (_thumbnail(image), cell_caption(x, y, cell.x, cell.y))
                    seconds = time.perf_counter() - start
                    yield self._out(status=f"**Done:** {line} · {seconds:.1f} s. The grid is a PNG: download it "
                                    "with its button.", grid=str(path), cells=[cells[i] for i in sorted(cells)])
                    return
                if event.finished:
                    for cell, image in event.finished:
                        cells[cell.index] = (_thumbnail(image), cell_caption(x, y, cell.x, cell.y))
                    yield self._out(status=f"**Sweeping:** {line}", cells=[cells[i] for i in sorted(cells)])
                    batch += 1
                else:
                    yield self._out(status=f"**Sweeping:** {line}")
                if stop.is_set():
                    break
        except Exception as exc:
            raise gr_error(exc) from exc
        finally:
            events.close()  # a Stop, a client's cancel or a closed tab: no further UNet call
        line = progress_line(min(batch, batch_count), batch_count, step, steps, len(cells), count)
        kept = " The finished cells are kept below." if cells else ""
        yield self._out(status=f"**Stopped** at {line}.{kept}")

    def _save(self, grid: Image.Image):
        """The grid as a PNG file: served as it is, not re-encoded lossy by the image component."""
        folder = self.handlers.output_dir / f"sweep-{uuid.uuid4().hex[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "grid.png"
        grid.save(path, format="PNG")
        return path


def build_sweep_tab(handlers, controls: list) -> None:

    sweeps = Sweeps(handlers)
    gr.Markdown(
        "Run one setting against another: every combination of the X and Y values, with everything else from "
        "the **Explore** tab (its first seed only). Cells that share scheduler, steps, size and eta run "
        f"together as one batch. At most {MAX_CELLS} cells."
    )
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                x_axis = FieldDropdown(AXIS_CHOICES, value="guidance_scale", label="X axis", scale=1)
                x_values = FieldTextbox(label="X values", value="1, 3, 7.5", scale=2,
                                      info=f"Comma-separated. {AXIS_HINTS['guidance_scale'][1]}")
            with gr.Row():
                y_axis = FieldDropdown(AXIS_CHOICES, value="seed", label="Y axis", scale=1)
                y_values = FieldTextbox(label="Y values", value="1, 2", scale=2,
                                      info=f"Comma-separated. {AXIS_HINTS['seed'][1]}")
            with gr.Row():
                run_btn = gr.Button("Run sweep", variant="primary")
                stop_btn = gr.Button("Stop sweep", variant="stop")
            status = gr.Markdown("Press **Run sweep**.", label="Sweep status", elem_id="sweep-status")
        with gr.Column(scale=3):
            grid = gr.Image(label="Grid", type="filepath", interactive=False, format="png",
                            buttons=["download", "fullscreen"], elem_id="sweep-grid")
            # the running sweep's id, from the first update of its stream: Stop sweep sends it back
            run_id = gr.Textbox(label="Sweep run id", visible=False)
            cells = ServedGallery(label="Cells", columns=4, format="jpeg", object_fit="contain", height="auto",
                               buttons=["download", "fullscreen"], elem_id="sweep-cells")

    x_axis.input(sweeps.describe_axis, inputs=x_axis, outputs=x_values, api_name="describe_x_axis")
    y_axis.input(sweeps.describe_axis, inputs=y_axis, outputs=y_values, api_name="describe_y_axis")
    run_btn.click(
        takes_controls(sweeps.sweep), inputs=list(controls) + [x_axis, x_values, y_axis, y_values],
        outputs=[status, grid, cells, run_id], api_name="sweep", concurrency_id="gpu",
    )
    stop_btn.click(sweeps.stop, inputs=run_id, api_name="stop_sweep", queue=False)
