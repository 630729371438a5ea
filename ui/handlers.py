"""Event handlers: UI values -> GenerationRequest -> a worker-thread run -> rendered updates.

The only place that turns library errors into `gr.Error`. Handlers take and return plain values in the
order of `CONTROL_NAMES`, so the page, the API and the tests share one description of the controls.
"""

from __future__ import annotations

import functools
import inspect
import logging
import shutil
import tempfile
import threading
import typing
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode, urlsplit, urlunsplit

import gradio as gr

from pipeline import GenerationRequest, RequestError
from pipeline.conditioning import truncations
from pipeline.metadata import read_settings, save_png
from pipeline.presets import Preset
from pipeline.previews import make_preview_decoder

from . import render
from .streaming import History, Run

logger = logging.getLogger(__name__)

# Every control that decides a run, in one order: the API's parameters, the URL's keys, presets, PNGs.
CONTROL_NAMES: tuple[str, ...] = (
    "prompt",
    "prompt_2",
    "mode",
    "negative_prompt",
    "negative_prompt_2",
    "uncond",
    "guidance_scale",
    "steps",
    "seed",
    "num_seeds",
    "scheduler",
    "eta",
    "width",
    "height",
    "preview",
    "preview_every",
    "preview_source",
)
INT_CONTROLS = {"steps", "seed", "num_seeds", "width", "height", "preview_every"}
FLOAT_CONTROLS = {"guidance_scale", "eta"}
RUNS_KEPT = 32  # final-PNG folders kept on disk; Gradio's own cache is bounded by delete_cache

try:  # ZeroGPU Spaces: hold a GPU only while a run executes. Elsewhere `spaces` is absent and nothing changes.
    import spaces

    gpu = spaces.GPU(duration=180)
except ImportError:

    def gpu(fn):
        return fn


def takes_controls(fn):
    """Give a `(*values, **special)` handler one named parameter per control, so API clients see `prompt=`,
    `steps=`... instead of `param_7`. Gradio reads the signature to name and count an endpoint's inputs, and
    injects `gr.Request` only into positional parameters, so keyword-only ones become positional here."""
    hints = typing.get_type_hints(fn)
    extras = [p.name for p in inspect.signature(fn).parameters.values() if p.kind == inspect.Parameter.KEYWORD_ONLY]
    params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in CONTROL_NAMES]
    params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=hints[n]) for n in extras]
    count = len(CONTROL_NAMES)

    def split(args):
        return args[:count], dict(zip(extras, args[count:]))

    if inspect.isgeneratorfunction(fn):  # Gradio streams only from a generator function

        @functools.wraps(fn)
        def wrapper(*args):
            values, special = split(args)
            yield from fn(*values, **special)
    else:

        @functools.wraps(fn)
        def wrapper(*args):
            values, special = split(args)
            return fn(*values, **special)

    wrapper.__signature__ = inspect.Signature(params)
    wrapper.__annotations__ = {n: hints[n] for n in extras}
    return wrapper


def request_from_settings(settings: dict[str, Any]) -> GenerationRequest:
    """Controls -> request; seeds are `Number of seeds` consecutive seeds starting at `Seed`."""
    seed, count = int(settings["seed"]), int(settings["num_seeds"])
    if not 1 <= count <= 16:
        raise RequestError("num_seeds", f"Number of seeds must be from 1 to 16, got {count}")
    return GenerationRequest(
        prompt=settings["prompt"] or "",
        prompt_2=settings["prompt_2"] or "",
        negative_prompt=settings["negative_prompt"] or "",
        negative_prompt_2=settings["negative_prompt_2"] or "",
        mode=settings["mode"],
        guidance_scale=float(settings["guidance_scale"]),
        steps=int(settings["steps"]),
        seeds=tuple(range(seed, seed + count)),
        width=int(settings["width"]),
        height=int(settings["height"]),
        scheduler=settings["scheduler"],
        eta=float(settings["eta"]),
        uncond=settings["uncond"],
    )


def settings_from_request(request: GenerationRequest) -> dict[str, Any]:
    """Request -> the controls it decides (previews settings are left as they are)."""
    data = request.to_dict()
    seeds = data.pop("seeds")
    data["seed"], data["num_seeds"] = seeds[0], len(seeds)
    if list(seeds) != list(range(seeds[0], seeds[0] + len(seeds))):
        logger.info("seeds %s are not consecutive; the page shows %d seeds from %d", seeds, len(seeds), seeds[0])
    return data


def settings_from_query(params: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """URL query -> control values; returns the values and a list of problems (unknown keys are ignored)."""
    settings, problems = {}, []
    for name in CONTROL_NAMES:
        if name not in params:
            continue
        raw = params[name]
        try:
            settings[name] = int(raw) if name in INT_CONTROLS else float(raw) if name in FLOAT_CONTROLS else raw
        except ValueError:
            problems.append(f"{name}={raw!r} is not a number")
    return settings, problems


def query_from_settings(settings: dict[str, Any]) -> str:
    return urlencode({name: settings[name] for name in CONTROL_NAMES if name in settings})


def _error(exc: Exception) -> gr.Error:
    return gr.Error(str(exc), title="Invalid input" if isinstance(exc, ValueError) else "Generation failed")


class Handlers:
    """The app's behaviour, bound to one loaded pipeline. One instance serves every session."""

    def __init__(self, pipe, taesd=None, model_name: str = "", presets: list[Preset] | None = None, output_dir: Path | None = None):
        self.pipe, self.taesd, self.model_name = pipe, taesd, model_name
        self.presets = presets or []
        self.output_dir = Path(output_dir or Path(tempfile.gettempdir()) / "cfg-explorer-outputs")
        self._lock = threading.Lock()

    # --- generation -------------------------------------------------------------------------------

    def decoder(self, name: str):
        try:
            return make_preview_decoder(name, self.pipe, self.taesd)
        except ValueError as exc:
            raise RequestError("preview", str(exc).split(": ", 1)[-1]) from exc

    def start_run(self, settings: dict[str, Any]) -> Run:
        request = request_from_settings(settings)
        source = settings.get("preview_source") or "pred_x0"
        if source not in ("pred_x0", "latents"):
            raise RequestError("preview_source", f"must be pred_x0 or latents, got {source!r}")
        every = int(settings.get("preview_every") or 1)
        if not 1 <= every <= 50:
            raise RequestError("preview_every", f"Preview every N steps must be from 1 to 50, got {every}")
        decoder = self.decoder(settings.get("preview") or "linear")
        return Run(self.pipe, request, decoder, every, source=lambda event: getattr(event, source))

    def bound(self, name: str):
        """A handler bound to this instance, with the controls as named parameters (see `takes_controls`)."""
        method = getattr(self, name)
        return takes_controls(method)

    def generate(self, *values: Any) -> Iterator[tuple]:
        """Stream (gallery, status, step slider, plot, downloads, history) while the run denoises."""
        settings = dict(zip(CONTROL_NAMES, values))
        try:
            run = self.start_run(settings)
        except ValueError as exc:
            raise _error(exc) from exc
        yield from self._stream(run)

    @gpu
    def _stream(self, run: Run) -> Iterator[tuple]:
        seeds = run.request.seeds
        skip = gr.skip()
        try:
            for frame in run.start().frames():
                status = render.status(frame.step, frame.total, frame.steps_per_second, done=frame.images is not None)
                if frame.images is not None:
                    paths = self._save(run.request, frame.images)
                    gallery = [(str(p), render.caption(s)) for p, s in zip(paths, seeds)]
                    slider = gr.update(maximum=frame.total, value=frame.total, interactive=True)
                    plot = render.norm_table(run.history.norms, seeds)
                    yield gallery, status, slider, plot, [str(p) for p in paths], run.history
                elif frame.previews is not None:
                    gallery = [(img, render.caption(s, frame.step, frame.total)) for img, s in zip(frame.previews, seeds)]
                    yield gallery, status, skip, skip, skip, skip
                else:
                    yield skip, status, skip, skip, skip, skip
        except Exception as exc:
            logger.exception("generation failed")
            raise _error(exc) from exc
        finally:
            run.stop()  # the page's Stop, a client's cancel or a closed tab all end the worker within a step

    def _save(self, request: GenerationRequest, images) -> list[Path]:
        folder = self.output_dir / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True, exist_ok=True)
        paths = [save_png(img, folder / f"seed-{seed}.png", request, seed, self.model_name) for img, seed in zip(images, request.seeds)]
        with self._lock:  # keep the newest RUNS_KEPT folders; Gradio copies what it serves into its own cache
            folders = sorted(self.output_dir.iterdir(), key=lambda p: p.stat().st_mtime)
            for old in folders[:-RUNS_KEPT]:
                shutil.rmtree(old, ignore_errors=True)
        return paths

    # --- revisiting and explaining ----------------------------------------------------------------

    def show_step(self, history: History | None, step: float, seed: float, num_seeds: float):
        if history is None or not history.frames:
            return gr.skip()
        found = history.nearest(int(step))
        if found is None:
            return gr.skip()
        shown, images = found
        seeds = range(int(seed), int(seed) + len(images))
        total = max(history.frames)
        return [(img, render.caption(s, shown, total)) for img, s in zip(images, seeds)]

    def describe_mode(self, mode: str):
        negative = mode == "negative_direction"
        return render.formula(mode), gr.update(visible=negative), gr.update(visible=negative)

    def describe_scheduler(self, scheduler: str):
        return gr.update(visible=scheduler == "ddim")

    def count_tokens(self, prompt: str, prompt_2: str, negative_prompt: str, negative_prompt_2: str, mode: str) -> str:
        texts = {"prompt": prompt or "", "prompt_2": prompt_2 or ""}
        if mode == "negative_direction":
            texts.update(negative_prompt=negative_prompt or "", negative_prompt_2=negative_prompt_2 or "")
        return render.truncation_warning(truncations(self.pipe, **texts))

    # --- settings in and out: presets, links, PNGs ------------------------------------------------

    def _updates(self, settings: dict[str, Any]) -> tuple:
        return tuple(settings[name] if name in settings else gr.skip() for name in CONTROL_NAMES)

    def load_preset(self, index: int) -> tuple:
        if index is None or not 0 <= int(index) < len(self.presets):
            raise gr.Error(f"Preset: choose one of the {len(self.presets)} presets")
        preset = self.presets[int(index)]
        settings = settings_from_request(preset.request)
        if preset.preview:
            settings["preview"] = preset.preview
        gr.Info(f"{preset.name}: {preset.description}")
        return self._updates(settings)

    def restore_from_png(self, path: str | None) -> tuple:
        if not path:
            return self._updates({})
        try:
            request, seed = read_settings(path)
        except ValueError as exc:
            raise _error(exc) from exc
        gr.Info(f"Restored the settings of {Path(path).name} (seed {seed}).")
        return self._updates(settings_from_request(request))

    def share_link(self, *values: Any, request: gr.Request | None = None) -> str:
        settings = dict(zip(CONTROL_NAMES, values))
        try:
            request_from_settings(settings)  # only valid settings make a link
        except ValueError as exc:
            raise _error(exc) from exc
        base = "http://localhost:7860/"
        if request is not None:
            # The browser's page address (Referer) survives proxies and Spaces' iframes; API clients have none.
            page = request.headers.get("referer") or str(request.base_url)
            parts = urlsplit(page)
            base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return f"{base}?{query_from_settings(settings)}"

    def restore_from_query(self, request: gr.Request) -> tuple:
        params = dict(request.query_params) if request is not None else {}
        settings, problems = settings_from_query(params)
        for problem in problems:
            gr.Warning(f"Link: ignored {problem}")
        return self._updates(settings)
