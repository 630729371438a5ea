"""The Distribution tab: many seeds at several guidance scales, and what guidance does to their distribution.

The measuring is `pipeline.distribution.run_lab`, one `ScaleResult` per scale (per value of an optional other
axis) as it finishes; this module reads the inputs strictly, streams the results and draws them
(`distribution_render`); `distribution_page` lays the page out. In the toy world every number is exact against the known data; on a real model no
target exists, and the page says so and shows proxies. The library runs on a worker thread
(`ui.streaming.in_background`), so the status can say every second that a long scale is still running. Stop
works as on the other tabs, by run id: nothing more is shown, the worker ends after the result in hand, and the
run's own stream says where it stopped.
"""

from __future__ import annotations

import html
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from pipeline import MODES, SCHEDULERS, GenerationRequest, RequestError
from pipeline.distribution import (
    MAX_AXIS_VALUES,
    MODEL_MAX_SEEDS,
    TOY_MAX_SEEDS,
    LabPreset,
    LabSettings,
    ScaleResult,
    load_lab_presets,
    run_lab,
)
from pipeline.loop import plan_passes
from pipeline.models import is_toy

from . import distribution_render as draw
from .fields import gr_error, refused
from .handlers import gpu, gpu_seconds
from .streaming import in_background

TOY_MIN_SEEDS = 64  # below this the noise band is wider than most effects the presets show
TOY_SIZE = 128  # px: the toy's items are as far apart at 128 px as at 1024, and 16x cheaper
NO_AXIS = "none"
AXIS_LABELS = {
    "guidance_interval": "Guidance interval",
    "guidance_rescale": "Guidance rescale",
    "prompt_adherence": "Prompt adherence",
    "mode": "Guidance mode",
    "scheduler": "Scheduler (and eta)",
}
AXIS_HINTS = {  # example values, and what the values may be
    "guidance_interval": ("0-1, 0-0.4, 0.4-1", "Each a start-stop pair of fractions of the steps, as 0-0.4: "
                                               "guidance only on that part of the run."),
    "guidance_rescale": ("0, 0.7", "From 0 to 1 (Lin et al. 2023's φ)."),
    "prompt_adherence": ("0.3, 0.5, 1", "From 0 to 1: how well the toy model learned its prompts."),
    "mode": ("cfg, cond_only", "Any of: " + ", ".join(MODES) + "."),
    "scheduler": ("euler, euler_a, ddim:0, ddim:1", "A scheduler, or ddim:eta for DDIM with that eta. Any of: "
                  + ", ".join(SCHEDULERS) + "."),
}
INPUTS = ("prompt", "prompt_2", "n_seeds", "scales", "mode", "scheduler", "eta", "steps", "size", "adherence",
          "axis", "axis_values", "exact_start")
OUTPUTS = ("status", "figure", "shown", "figure_paths", "note", "numbers", "precision", "entropy", "tv", "samples",
           "run_id")
FIELD_LABELS = {  # library field -> this tab's label
    "prompt": "Lab prompt", "prompt_2": "Lab prompt 2", "mode": "Lab guidance mode",
    "scheduler": "Lab scheduler", "eta": "Lab eta", "steps": "Lab steps", "width": "Lab size",
    "height": "Lab size", "prompt_adherence": "Lab prompt adherence", "scales": "Lab scales",
    "n_seeds": "Lab seeds", "axis": "Other axis", "axis_values": "Other axis values",
    "exact_start": "Exact start", "first_seed": "Lab seeds",
}


def parse_scales(text: str) -> tuple[float, ...]:
    """"1, 3, 7.5" -> (1.0, 3.0, 7.5); ranges are the library's to check (it names them)."""
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if not items:
        raise refused("give at least one guidance scale, e.g. 1, 3, 7.5", label="Lab scales")
    try:
        return tuple(float(item) for item in items)
    except ValueError:
        raise refused(f"must be numbers separated by commas, e.g. 1, 3, 7.5; got {text[:60]!r}",
                      label="Lab scales") from None


def _axis_value(axis: str, item: str) -> Any:
    if axis == "guidance_interval":
        start, sep, stop = item.partition("-")
        if not sep:
            raise ValueError(f"{item!r} is not a start-stop pair such as 0-0.4")
        return float(start), float(stop)
    if axis == "scheduler" and ":" in item:
        name, eta = item.split(":", 1)
        return name.strip(), float(eta)
    if axis in ("guidance_rescale", "prompt_adherence"):
        return float(item)
    return item


def parse_axis(axis: str, text: str) -> tuple[str | None, tuple]:
    """The other axis and its values, from the dropdown and the text; (None, ()) for none."""
    if axis in (None, NO_AXIS):
        return None, ()
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if not items:
        raise refused(f"give the values of {AXIS_LABELS.get(axis, axis)}, e.g. {AXIS_HINTS.get(axis, ('',))[0]}",
                      label="Other axis values")
    try:
        return axis, tuple(_axis_value(axis, item) for item in items)
    except ValueError as exc:
        raise refused(f"{AXIS_HINTS.get(axis, ('', ''))[1]} ({exc})"[:280], label="Other axis values") from None


def axis_text(axis: str | None, values: tuple) -> str:
    """Values -> the text `parse_axis` reads back (for presets)."""
    def one(value: Any) -> str:
        if axis == "guidance_interval":
            return f"{value[0]:g}-{value[1]:g}"
        if isinstance(value, tuple):
            return f"{value[0]}:{value[1]:g}"
        return draw.value_text(value)
    return ", ".join(one(v) for v in values)


def progress_html(done: int, total: int, text: str) -> str:
    """A progress bar and a status line (HTML: the bar is a <progress> element)."""
    bar = f'<progress value="{done}" max="{max(total, 1)}" style="width: 100%; height: 10px;"></progress>'
    return f'{bar}<div id="lab-status-text">{text}</div>'


class Pictures:
    """A run's pictures, drawn and saved once each as its result arrives: every update sends them all (a gallery
    is replaced whole), and drawing and encoding them all again each time would grow with the square of the
    results."""

    def __init__(self, folder: Path, axis_label: str, toy: bool) -> None:
        self.folder, self.axis_label, self.toy = folder, axis_label, toy
        self.figures: dict[str, str] = {}  # result's name -> PNG path: the toy's figure, a real model's mosaic
        self.samples: list[tuple[str, str]] = []  # (JPEG path, caption): the toy's samples

    def add(self, result: ScaleResult) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        k, caption = len(self.figures), draw.caption(result, self.axis_label)
        name = draw.result_name(result, self.axis_label)
        if result.exact is not None:
            self.figures[name] = self._save(draw.scale_figure(result, self.axis_label), f"figure-{k}.png")
        else:
            self.figures[name] = self._save(draw.mosaic(result), f"mosaic-{k}.png")
        if self.toy:
            self.samples.append((self._save(draw.mosaic(result), f"samples-{k}.jpg"), caption))

    def _save(self, image, name: str) -> str:
        path = self.folder / name
        image.convert("RGB").save(path, quality=90)  # quality: the JPEG's; a PNG ignores it
        return str(path)


class Distributions:
    """The Distribution tab's behaviour; one instance serves every session."""

    def __init__(self, handlers, presets: list[LabPreset] | None = None) -> None:
        self.handlers = handlers
        self.toy = is_toy(handlers.pipe)
        # The presets' notes state what the toy world measures: on a real model they would promise what it
        # does not show, so they are the toy's only.
        found = presets if presets is not None else (load_lab_presets() if self.toy else [])
        self.presets = {p.name: p for p in found}
        self.max_seeds = TOY_MAX_SEEDS if self.toy else MODEL_MAX_SEEDS

    def settings(self, prompt: str, prompt_2: str, n_seeds: int, scales: str, mode: str, scheduler: str,
                 eta: float, steps: int, size: int, adherence: float | None, axis: str, axis_values: str,
                 exact_start: bool) -> LabSettings:
        """The inputs as one validated LabSettings; every error names its control by label and says the range."""
        scale_values = parse_scales(scales)
        axis_name, values = parse_axis(axis, axis_values)
        try:
            request = GenerationRequest(prompt=prompt, prompt_2=prompt_2 or "", mode=mode, scheduler=scheduler,
                                        eta=eta, steps=int(steps), width=int(size), height=int(size), seeds=(0,),
                                        prompt_adherence=adherence if self.toy else None)
            return LabSettings(request, scale_values, int(n_seeds), axis=axis_name, axis_values=values,
                               exact_start=bool(exact_start) if self.toy else False)
        except RequestError as exc:
            raise gr_error(exc, FIELD_LABELS) from exc

    def run(self, prompt: str, prompt_2: str, n_seeds: int, scales: str, mode: str, scheduler: str, eta: float,
            steps: int, size: int, adherence: float | None = None, axis: str = NO_AXIS, axis_values: str = "",
            exact_start: bool = False, request: gr.Request = None) -> Iterator[tuple]:
        """Stream (status, figure, its chooser, the figures, note, numbers, three curves, samples, run id): one
        update per result, the newest one's figure shown."""
        settings = self.settings(prompt, prompt_2, n_seeds, scales, mode, scheduler, eta, steps, size, adherence,
                                 axis, axis_values, exact_start)
        stop = threading.Event()
        with self.handlers.jobs.running(request, stop.set) as run_id:
            yield from self._stream(settings, stop, run_id)

    def stop(self, run_id: str) -> None:
        """End the lab run with this id after the result it is measuring; its stream says where it stopped."""
        if not self.handlers.jobs.stop(run_id):
            gr.Info("Nothing to stop: that lab run has ended (or has not started yet).")

    @staticmethod
    def _out(**updates) -> tuple:
        return tuple(updates.get(name, gr.skip()) for name in OUTPUTS)

    @gpu(duration=lambda self, settings, stop, run_id="": gpu_seconds(
        settings.n_seeds * len(settings.scales) * max(1, len(settings.axis_values))
        * sum(plan_passes(settings.request)), settings.request.width, settings.request.height))
    def _stream(self, settings: LabSettings, stop: threading.Event, run_id: str = "") -> Iterator[tuple]:
        total = len(settings.scales) * max(1, len(settings.axis_values))
        axis_label = AXIS_LABELS.get(settings.axis, "")
        what = f"{total} {'scales' if settings.axis is None else 'results'} × {settings.n_seeds} seeds"
        yield self._out(run_id=run_id, status=progress_html(0, total, f"<b>Starting:</b> {what}, "
                        f"{settings.request.steps} steps each, the same seeds at every scale."),
                        figure=None, shown=gr.update(choices=[], value=None), figure_paths={}, numbers=None,
                        precision=None, entropy=None, tv=None, samples=[],
                        note=self._note(None))
        results: list[ScaleResult] = []
        pictures = Pictures(self.handlers.output_dir / f"lab-{uuid.uuid4().hex[:12]}", axis_label, self.toy)
        start = time.perf_counter()
        try:
            for result in in_background(lambda: run_lab(self.handlers.pipe, settings), stop):
                if result is None:  # still measuring: say for how long, so a long scale is not mistaken for a hang
                    yield self._out(status=progress_html(len(results), total, self._waiting(
                        results, total, settings, time.perf_counter() - start)))
                    continue
                results.append(result)
                pictures.add(result)
                yield self._update(results, pictures, settings, axis_label, time.perf_counter() - start)
        except Exception as exc:
            raise gr_error(exc, FIELD_LABELS) from exc
        if len(results) < total:
            kept = " The finished results are kept below." if results else ""
            yield self._out(status=progress_html(len(results), total, f"<b>Stopped</b> after {len(results)} of "
                                                 f"{total}.{kept}"))

    @staticmethod
    def _waiting(results: list[ScaleResult], total: int, settings: LabSettings, seconds: float) -> str:
        where = "scale" if settings.axis is None else "result"
        return (f"<b>Measuring:</b> {where} {len(results) + 1} of {total}, {settings.n_seeds} seeds · "
                f"{seconds:.0f} s so far")

    def _update(self, results: list[ScaleResult], pictures: Pictures, settings: LabSettings, axis_label: str,
                seconds: float) -> tuple:
        last = results[-1]
        where = "scale" if settings.axis is None else "result"
        name = draw.result_name(last, axis_label)
        head = "Done" if last.done == last.total else "Measuring"
        # the time so far, not the library's time since the previous result: scales measured in one batch
        # finish together, and "0.0 s" for the second would mislead
        line = (f"<b>{head}:</b> {where} {last.done} of {last.total} ({html.escape(name)}): {last.n_seeds} seeds, "
                f"{seconds:.1f} s so far")
        plots = self._curves(results, settings, axis_label)
        samples = list(pictures.samples) if self.toy else gr.skip()
        return self._out(status=progress_html(last.done, last.total, line),
                         figure=pictures.figures[name], figure_paths=dict(pictures.figures),
                         shown=gr.update(choices=list(pictures.figures), value=name),
                         numbers=draw.table(results, axis_label), note=self._note(last), samples=samples, **plots)

    @staticmethod
    def show(name: str, paths: dict[str, str]) -> str:
        """The figure of the finished result `name` (from this session's last run)."""
        if name not in (paths or {}):
            raise refused(f"must be one of the finished results ({', '.join(paths or {}) or 'none yet'})"
                          f", got {str(name)[:60]!r}", label="Show result")
        return paths[name]

    def _curves(self, results, settings: LabSettings, axis_label: str) -> dict:
        metrics = () if self.toy else tuple(draw.PROXY_COLUMNS)
        frames = draw.curve_frames(results, sorted(settings.scales), settings.axis_values, axis_label, metrics)
        names = ("precision", "entropy", "tv") if self.toy else metrics
        return {slot: frames.get(name) for slot, name in zip(("precision", "entropy", "tv"), names)}

    def _note(self, result: ScaleResult | None) -> str:
        if not self.toy:
            return NO_TARGET
        return draw.noise_note(result) if result is not None else ""

    def describe_axis(self, axis: str):
        """Picking an axis fills its values with an example and says what values it takes."""
        example, hint = AXIS_HINTS.get(axis, ("", ""))
        if axis in (None, NO_AXIS):
            return gr.update(value="", info="Pick an axis above to vary it.")
        return gr.update(value=example, info=f"Comma-separated, at most {MAX_AXIS_VALUES}. {hint}")

    def load_preset(self, name: str) -> tuple:
        """The preset's settings into the inputs (INPUTS order), and its note, which stays on the page."""
        preset = self.presets.get(name)
        if preset is None:
            raise refused(f"must be one of {', '.join(self.presets)}; got {str(name)[:60]!r}", label="Lab preset")
        s, r = preset.settings, preset.settings.request
        values = {
            "prompt": r.prompt, "prompt_2": r.prompt_2, "n_seeds": s.n_seeds,
            "scales": ", ".join(f"{x:g}" for x in s.scales), "mode": r.mode, "scheduler": r.scheduler,
            "eta": r.eta, "steps": r.steps, "size": r.width,
            "adherence": r.prompt_adherence if r.prompt_adherence is not None else gr.skip(),
            "axis": s.axis or NO_AXIS, "axis_values": axis_text(s.axis, s.axis_values), "exact_start": s.exact_start,
        }
        return (*(values[name] for name in self.inputs()), f"**{preset.name}.** {preset.description}")

    def inputs(self) -> tuple[str, ...]:
        """The inputs this model's page has: the toy's own only in the toy world."""
        return INPUTS if self.toy else tuple(n for n in INPUTS if n not in ("adherence", "exact_start"))


NO_TARGET = ("**No exact target on this model.** A real model's data distribution is unknown, so nothing here "
             "is measured against a target. The mosaics show the samples; the numbers are **proxies** of "
             "diversity that need no extra weights (higher Vendi score and pairwise distance: more varied "
             "samples). Run the app with `--model toy` to measure against the exact distribution.")
