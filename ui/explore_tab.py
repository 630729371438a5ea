"""The Explore tab: the controls, one run streamed live (previews, guidance plot, decomposition), and the ways
in and out of its settings (presets, links, PNGs).

The run goes UI values -> GenerationRequest (`controls.request_from_settings`) -> a worker-thread `Run` ->
rendered updates. Handlers take and return plain values in the order of `CONTROL_NAMES`, so the page, the
API and the tests share one description of the controls.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import MISSING, fields
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import gradio as gr
from PIL import Image

from pipeline import GenerationRequest, RequestError
from pipeline.inversion import fit_size
from pipeline.conditioning import truncations
from pipeline.guidance import GUIDANCE_MODES
from pipeline.loop import img2img_start, plan_passes
from pipeline.memory import is_out_of_memory
from pipeline.metadata import read_settings, save_png
from pipeline.models import is_toy, memory_choice
from pipeline.models.toy import draw
from pipeline.previews import make_preview_decoder
from pipeline.request import MAX_WEIGHTED_PROMPTS, SIZE_MULTIPLE
from pipeline.schedules import guidance_scales
from pipeline.uploads import load_image

from . import guidance_plot, render
from .controls import (
    BY_LABEL,
    CONTROL_NAMES,
    CONTROLS,
    MAX_LINK_CHARS,
    query_from_settings,
    read,
    request_from_settings,
    settings_from_query,
    settings_from_request,
)
from .fields import FieldCheckbox, FieldDropdown, FieldFile, FieldImage, FieldNumber, FieldRadio, FieldSlider, FieldTextbox, REFUSALS, refused
from .handlers import Handlers, gpu, gr_error, request_gpu_seconds, takes_controls
from .served import ServedGallery
from .streaming import History, Run
from .whatif import WhatIfPanel, build_whatif, wire_whatif

logger = logging.getLogger(__name__)

# What one generate() update carries, in the order of the event's outputs (API clients get them without the
# State: history).
GENERATE_OUTPUTS = ("gallery", "status", "step_slider", "norm_plot", "downloads", "history", "decomposition",
                    "run_id", "final_btn", "norm_note", "decomposition_note")
# The Explore tab's collapsed groups, and the controls inside each: a preset, PNG or the Invert tab that changes
# one of these opens its group, so the change is seen.
GROUP_TITLES = {
    "text": "Prompt 2 and the unconditional baseline",
    "schedule": "Guidance schedule and interval",
    "size": "Size and start image (img2img)",
    "previews": "Previews and decomposition",
    "links": "Links and saved settings",
}
CONTROL_GROUPS = {
    "prompt_2": "text", "uncond": "text",
    "guidance_schedule": "schedule", "guidance_cutoff": "schedule", "interval_start": "schedule",
    "interval_stop": "schedule", "guidance_rescale": "schedule",
    "width": "size", "height": "size", "strength": "size",
    "preview": "previews", "preview_every": "previews", "preview_source": "previews", "decompose": "previews",
    "decompose_seed": "previews",
}
RUNS_KEPT = 32  # final-PNG folders kept on disk; Gradio's own cache is bounded by delete_cache

# Defaults: the request's own, where it has one (one source for the page, the API and notebooks)...
REQUEST_DEFAULTS: dict[str, Any] = {
    **{f.name: f.default for f in fields(GenerationRequest) if f.default is not MISSING and f.name in CONTROLS},
    "interval_start": GenerationRequest.__dataclass_fields__["guidance_interval"].default[0],
    "interval_stop": GenerationRequest.__dataclass_fields__["guidance_interval"].default[1],
    **{f"weighted_prompt_{k}": "" for k in range(1, MAX_WEIGHTED_PROMPTS + 1)},
}
# ... and the page's own starting point where the request has none (or a different one for a first look).
PAGE_DEFAULTS: dict[str, Any] = {
    "prompt": "a watercolor painting of an otter",
    "negative_prompt": "solar system with 9 planets",
    "seed": 1,
    "num_seeds": 2,
    "preview": "tiny",
}
# The toy world's starting point, in its own words: text it cannot read would be ignored there (an otter as
# Weighted prompt 1 samples anything at all), and would ride along, unseen, in links and "Changed:" notes.
TOY_PAGE_DEFAULTS: dict[str, Any] = {
    "prompt": "red circle",
    "negative_prompt": "big",  # as a negative direction: towards red circles, away from big shapes
    "weighted_prompt_1": "red circle",
}


def page_defaults(toy: bool) -> dict[str, Any]:
    """The page's starting values that the request does not give: the toy world's own words on the toy."""
    return {**PAGE_DEFAULTS, "weighted_prompt_1": PAGE_DEFAULTS["prompt"], **(TOY_PAGE_DEFAULTS if toy else {})}


PNG_LABEL = "Drop a CFG Explorer PNG to restore its settings"


class Explore:
    """The Explore tab's behaviour; one instance serves every session."""

    def __init__(self, handlers: Handlers, default_size: int | None = None) -> None:
        self.handlers = handlers
        self.pipe, self.taesd, self.model_name = handlers.pipe, handlers.taesd, handlers.model_name
        self.presets, self.output_dir, self.jobs = handlers.presets, handlers.output_dir, handlers.jobs
        # Width and Height when a preset does not set them: the loaded model's own size, or the size the page starts at
        self.default_size = default_size or self.pipe.default_sample_size * self.pipe.vae_scale_factor
        self._lock = threading.Lock()
        self.toy = is_toy(self.pipe)
        # The toy model's own adherence, which the page starts from; a real model has none
        self.adherence_default = self.pipe.unet.config.prompt_adherence if self.toy else None

    # --- generation -------------------------------------------------------------------------------

    def decoder(self, name: str):
        return make_preview_decoder(name, self.pipe, self.taesd)

    def start_run(self, settings: dict[str, Any], init_image=None, init_latents=None, check_only: bool = False,
                  forks=None) -> Run | None:
        """The run the settings describe (not started); with `check_only`, only validate them. `forks`: the fork
        path of a restored PNG (`GenerationRequest.forks`), replayed from the start."""
        if init_image is not None:  # a path from the page, or an image from a notebook
            init_image = load_image(init_image, "init_image")
        request = request_from_settings(settings, init_image, init_latents)
        if forks:
            request = dataclasses.replace(request, forks=tuple(forks))  # validated again: steps may have changed
        # The preview settings are not the request's: read them as strictly, defaults where left out.
        get = {name: read(name, settings[name]) for name in ("preview", "preview_every", "preview_source")
               if settings.get(name) is not None}.get
        source, every = get("preview_source", "pred_x0"), get("preview_every", 1)
        decoder = self.decoder(get("preview", "linear"))  # cheap: a decoder that is not loaded fails here
        if check_only:
            return None
        return Run(self.pipe, request, decoder, every, source=lambda event: getattr(event, source),
                   cache=self.handlers.whatif.new(self.pipe, request))

    def bound(self, name: str):
        """A handler bound to this instance, with the controls as named parameters (see `takes_controls`)."""
        method = getattr(self, name)
        return takes_controls(method)

    def generate(self, *values: Any, init_image=None, start_latents=None, fork_path=None,
                 request: gr.Request = None) -> Iterator[tuple]:
        """Stream (gallery, status, step slider, plot, downloads, history, decomposition) while it denoises."""
        settings = dict(zip(CONTROL_NAMES, values))
        try:
            run = self.start_run(settings, init_image, start_latents, forks=fork_path)
        except ValueError as exc:
            raise gr_error(exc) from exc
        with self.jobs.running(request, run.stop) as run_id:
            yield from self.stream(run, run_id)

    def check_run(self, *values: Any, init_image=None, start_latents=None, fork_path=None) -> None:
        """The page validates before it runs: a refused value then leaves the last results as they are (an error
        in the run's own event would turn every output into an error badge)."""
        try:
            self.start_run(dict(zip(CONTROL_NAMES, values)), init_image, start_latents, check_only=True,
                           forks=fork_path)
        except ValueError as exc:
            raise gr_error(exc) from exc

    def explain_refused(self, request: gr.Request) -> tuple:
        """`explain_invalid` for the session's newest refused value, as the server kept it (`ui.fields.REFUSALS`)."""
        return self.explain_invalid(REFUSALS.take(getattr(request, "session_hash", None)))

    def explain_invalid(self, message: str | None) -> tuple:
        """After a refused run: the status says nothing ran and why; the control named is marked, its group opened.
        `message` is the error as the page showed it ("Seed: must be ...")."""
        message = (message or "").strip()
        label = message.split(":", 1)[0].strip() if ":" in message else ""
        names = [BY_LABEL[label]] if BY_LABEL.get(label) in CONTROL_NAMES else []
        # inside the block: a control in a row is clipped by the row's box, which hid an outline drawn outside it
        style = "".join(f"#ctl-{name}{{outline:2px solid var(--error-border-color, #ef4444);outline-offset:-2px}}"
                        for name in names)
        groups = {GROUP_TITLES[CONTROL_GROUPS[n]] for n in names if n in CONTROL_GROUPS}
        return (render.nothing_ran(message), f"<style>{style}</style>" if style else "",
                *(gr.update(open=True) if title in groups else gr.skip() for title in GROUP_TITLES.values()))

    def stop(self, run_id: str) -> None:
        """Stop the run with this id (the first update of its stream carries it) within one step; the run's
        own stream then reports where it stopped."""
        if not self.jobs.stop(run_id):
            gr.Info("Nothing to stop: that run has ended (or has not started yet).")

    @staticmethod
    def _out(**updates) -> tuple:
        return tuple(updates.get(name, gr.skip()) for name in GENERATE_OUTPUTS)

    @gpu(duration=lambda self, run, run_id="", intro=None: request_gpu_seconds(run.request))
    def stream(self, run: Run, run_id: str = "", intro: str | None = None) -> Iterator[tuple]:
        """Run `run` and stream its updates, in the order of GENERATE_OUTPUTS; `intro`: the first status line."""
        request, history = run.request, run.history
        seeds, total = request.seeds, run.history.total

        def plot(**labels):
            """The guidance-size plot, hidden while it has no point. It is never sent an empty (or null) table: once
            drawn, a plot given one warns of an "infinite extent" in the console at its next data (measured)."""
            data = guidance_plot.table(history.norms, seeds)
            return gr.update(visible=False, **labels) if data.empty else gr.update(value=data, visible=True, **labels)

        def slider(step: int, total: int):
            """The Revisit step slider over the steps that have previews; hidden when there are none."""
            if len(history.frames) < 2:  # nothing to move between (a 1-step run, or Stop before a preview)
                return gr.update(visible=False)
            return gr.update(minimum=min(history.frames), maximum=max(step, min(history.frames) + 1), value=step,
                             visible=True, interactive=True)  # the page refuses a slider whose minimum is its maximum

        decomposed = request.decompose_seed is not None
        # A new run clears what belonged to the last one: its plot, files, and step history.
        yield self._out(
            status=intro or render.starting(request), step_slider=gr.update(visible=False),
            norm_plot=plot(**guidance_plot.labels(request.mode)), downloads=None,
            gallery=gr.update(label=render.images_label(history.name)),  # the branch this run's images will show
            history=None, decomposition=gr.update(value=[], visible=decomposed), final_btn=gr.update(visible=False),
            run_id=run_id,
            norm_note=guidance_plot.note(request),
            decomposition_note=gr.update(
                value=render.decomposition_note(request.decompose_seed, None, total, None, request.mode) if decomposed else "",
                visible=decomposed),
        )
        last, plotted = None, 0
        try:
            for frame in run.start().frames():
                last = frame
                total = frame.total
                status = render.status(frame.step, frame.total, frame.steps_per_second, done=frame.images is not None,
                                       unet_chunks=frame.unet_chunks)
                # The guidance-size plot fills in as the run goes, whenever a new step has been measured.
                norm_plot = plot() if len(history.norms) != plotted else gr.skip()
                plotted = len(history.norms)
                decomposition = note = gr.skip()
                if frame.decomposition:
                    decomposition = render.decomposition_gallery(frame.decomposition)
                    note = render.decomposition_note(request.decompose_seed, frame.step, frame.total, frame.decomposition,
                                                     request.mode)
                if frame.images is not None:
                    if decomposed:
                        decomposition, note = self._most_different(history)
                    paths = self._save(request, frame.images)
                    history.finals = [str(p) for p in paths]
                    off = [False] * len(seeds)
                    if frame.landed:  # the toy world says where each seed landed, and which left its data
                        status += "\n\n" + render.landing_note(frame.landed, seeds, request)
                        off = history.off_data = [not spot.on_data for spot in frame.landed]
                    yield self._out(
                        gallery=[(str(p), render.caption(s, off_data=o)) for p, s, o in zip(paths, seeds, off)],
                        status=status,
                        step_slider=slider(frame.total, frame.total), norm_plot=norm_plot,
                        downloads=[str(p) for p in paths], history=history, decomposition=decomposition,
                        final_btn=gr.update(visible=False), decomposition_note=note,
                    )
                elif frame.previews is not None:
                    gallery = [(img, render.caption(s, frame.step, frame.total)) for img, s in zip(frame.previews, seeds)]
                    yield self._out(gallery=gallery, status=status, norm_plot=norm_plot, decomposition=decomposition,
                                    decomposition_note=note)
                else:
                    yield self._out(status=status, norm_plot=norm_plot)
        except Exception as exc:
            if not is_out_of_memory(exc):
                logger.exception("generation failed")
            raise gr_error(exc, memory=memory_choice(self.pipe).mode) from exc
        finally:
            run.stop()  # the page's Stop, a client's cancel or a closed tab all end the worker within a step
        if run.stopped and (last is None or last.images is None):
            step = last.step if last else 0
            yield self._out(status=render.stopped(step, total), step_slider=slider(max(step, 1), total),
                            norm_plot=plot(), history=history)

    def _save(self, request: GenerationRequest, images) -> list[Path]:
        folder = self.output_dir / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True, exist_ok=True)
        paths = [save_png(img, folder / f"seed-{seed}.png", request, seed, self.model_name) for img, seed in zip(images, request.seeds)]
        with self._lock:  # keep the newest RUNS_KEPT folders; Gradio copies what it serves into its own cache
            folders = sorted(self.output_dir.iterdir(), key=lambda p: p.stat().st_mtime)
            for old in folders[:-RUNS_KEPT]:
                shutil.rmtree(old, ignore_errors=True)
            if self.handlers.storage is not None:
                self.handlers.storage.prune()
        return paths

    # --- revisiting and explaining ----------------------------------------------------------------

    def show_step(self, history: History | None, step: float):
        """The stored previews (and decomposition) nearest to `step` of the last run, captioned with its seeds."""
        if history is None or not history.frames:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        shown, images = history.nearest(int(step))
        gallery = [(img, render.caption(s, shown, history.total)) for img, s in zip(images, history.seeds)]
        parts = history.decomposition_at(shown)
        decomposition = note = gr.skip()
        if history.decompose_seed is not None:
            decomposition = render.decomposition_gallery(parts) if parts else []
            note = render.decomposition_note(history.decompose_seed, shown, history.total, parts, history.mode)
        return gallery, decomposition, note, gr.update(visible=bool(history.finals))

    def show_final(self, history: History | None):
        """Back to the run's full-size final images, and the slider to its last step."""
        if history is None or not history.finals:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.update(visible=False)
        off = history.off_data or [False] * len(history.seeds)
        gallery = [(path, render.caption(s, off_data=o)) for path, s, o in zip(history.finals, history.seeds, off)]
        decomposition, note = self._most_different(history)
        return gallery, gr.update(value=history.total), decomposition, note, gr.update(visible=False)

    @staticmethod
    def _most_different(history: History) -> tuple:
        """With the final images, the decomposition at the step where its parts differ most, and the note why:
        by the last step the three x̂₀ have become one picture."""
        step = history.most_different()
        if history.decompose_seed is None or step is None:
            return gr.skip(), gr.skip()
        parts = history.decomposition_at(step)
        last = max(history.decompositions)
        note = render.decomposition_note(history.decompose_seed, step, history.total, parts, history.mode)
        note += " " + render.most_different(step, history.spreads.get(step, 0.0), last, history.spreads.get(last, 0.0))
        return render.decomposition_gallery(parts), note

    def describe_mode(self, mode: str):
        """The formula, which mode-specific controls to show, and which shared controls the mode ignores."""
        reads = GUIDANCE_MODES[mode].reads if mode in GUIDANCE_MODES else ()
        notes = render.control_notes(mode)
        return (
            render.formula(mode),
            gr.update(visible="negative_prompt" in reads),
            gr.update(visible=mode == "weighted"),
            *(gr.update(visible=mode == other.name) for other in render.MODES_WITH_PARAMS),
            *(gr.update(info=info, interactive=used) for info, used in notes.values()),
        )

    def describe_guidance_schedule(self, schedule: str):
        """Cutoff is only read by the cutoff schedule."""
        return gr.update(visible=schedule == "cutoff")

    def follow_seed(self, seed: float | None, num_seeds: float | None, decompose_seed: float | None):
        """Keep Decomposition seed among the run's seeds when Seed or Number of seeds moves."""
        try:
            first, count = int(seed), int(num_seeds)
        except (TypeError, ValueError):  # half-typed: leave it until Seed is a number again
            return gr.skip()
        if decompose_seed is not None and first <= decompose_seed < first + count:
            return gr.skip()
        return first

    def describe_scheduler(self, scheduler: str):
        return gr.update(visible=scheduler == "ddim")

    def describe_weights(self, *weights: float) -> str:
        return render.weights_line([float(w or 0.0) for w in weights])

    def describe_schedule(self, *values: Any):
        """The per-step scale curve and how many UNet passes the settings run; updated as the controls move."""
        settings = dict(zip(CONTROL_NAMES, values))
        try:
            r = request_from_settings(settings)
        except (ValueError, TypeError, KeyError):  # half-edited controls: keep the last curve until valid
            return gr.skip(), gr.skip()
        scales = guidance_scales(r.guidance_scale, r.steps, r.guidance_schedule, r.guidance_interval, r.guidance_cutoff)
        passes = plan_passes(r)
        return render.scale_table(scales), render.passes_line(passes, r)

    def describe_strength(self, image, strength: float, steps: float) -> str:
        if image is None:
            line = "Upload an image to start from it; the Width and Height sliders set the size it is resized to."
        else:
            line = render.strength_line(img2img_start(int(steps), float(strength)), int(steps))
        return f"{line}\n\n{render.TOY_IMG2IMG}" if self.toy else line

    def start_item(self, width: float, height: float) -> Image.Image:
        """The toy world's start image where strength shows: a data item (`render.TOY_START_ITEM`), drawn at the
        page's size. Any other image snaps to the data at every strength; an item stays one, up to a strength."""
        try:
            width, height = read("width", width), read("height", height)
        except RequestError as exc:
            raise gr_error(exc) from exc
        return draw(render.TOY_START_ITEM, width, height)

    def fit_image(self, image):
        """An uploaded start image sets Width and Height to its own size (multiples of 8, at most 1024 px)."""
        if image is None:
            return gr.skip(), gr.skip()
        try:
            width, height = fit_size(load_image(image, "init_image"))
        except RequestError as exc:
            raise gr_error(exc) from exc
        return width, height

    def count_tokens(self, prompt: str, prompt_2: str, negative_prompt: str, negative_prompt_2: str, mode: str) -> str:
        texts = {"prompt": prompt or "", "prompt_2": prompt_2 or ""}
        if mode in GUIDANCE_MODES and "negative_prompt" in GUIDANCE_MODES[mode].reads:
            texts.update(negative_prompt=negative_prompt or "", negative_prompt_2=negative_prompt_2 or "")
        return render.truncation_warning(truncations(self.pipe, **texts))

    # --- settings in and out: presets, links, PNGs ------------------------------------------------

    def _updates(self, settings: dict[str, Any]) -> tuple:
        return tuple(settings[name] if name in settings else gr.skip() for name in CONTROL_NAMES)

    def for_model(self, settings: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Settings from a preset, PNG or link as this model's page takes them, and a note on what it left out.

        The toy model's adherence: a request that leaves it unset (None) ran at the model's default, so the toy
        page shows that number; a real model has no such setting, so its page drops it and says so."""
        if "prompt_adherence" not in settings:
            return settings, ""
        adherence = settings["prompt_adherence"]
        if self.toy:
            return {**settings, "prompt_adherence": self.adherence_default if adherence is None else adherence}, ""
        settings = {name: value for name, value in settings.items() if name != "prompt_adherence"}
        if adherence is None:
            return settings, ""
        return settings, (f"Left out {CONTROLS['prompt_adherence'].label} ({adherence:g}): only the toy world's model "
                          "has it.")

    def snapshot(self, *values: Any) -> dict[str, Any]:
        """The controls as they are, to say afterwards what a preset, PNG or the Invert tab changed."""
        return dict(zip(CONTROL_NAMES, values))

    def changes(self, before: dict[str, Any] | None, settings: dict[str, Any]) -> tuple:
        """(what changed, one update per group: opened where a changed control sits in it)."""
        changed = {name: value for name, value in settings.items()
                   if before is None or not render.same(before.get(name), value)}
        groups = {GROUP_TITLES[CONTROL_GROUPS[name]] for name in changed if name in CONTROL_GROUPS}
        note = render.describe_changes(before, settings, {name: CONTROLS[name].label for name in CONTROL_NAMES},
                                       {name: GROUP_TITLES[g] for name, g in CONTROL_GROUPS.items()})
        return (note, *(gr.update(open=True) if title in groups else gr.skip() for title in GROUP_TITLES.values()))

    @staticmethod
    def group_outputs(out: dict) -> list:
        """The collapsed groups, in the order `changes` returns their updates."""
        return [out[f"group_{key}"] for key in GROUP_TITLES]

    def load_preset(self, index: int, before: dict[str, Any] | None = None) -> tuple:
        """(the controls, the preset's teaching text, what changed, the groups to open)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.presets):
            raise refused(f"Presets: choose one of the {len(self.presets)} presets (an index from 0 to "
                           f"{len(self.presets) - 1}), got {str(index)[:40]!r}")
        preset = self.presets[index]
        toy = is_toy(self.pipe)
        request, description = preset.for_model(toy=toy)
        settings, _ = self.for_model(settings_from_request(request))  # a preset's [request] never sets adherence
        if not preset.sets_size and not (toy and preset.toy_request is not None):
            # The size is not the lesson (the toy world's own table gives the toy's): keep the model's own size.
            settings["width"] = settings["height"] = self.default_size
        if preset.preview:
            settings["preview"] = preset.preview
        note = f"**{preset.title(toy)}.** {description}"
        return (*self._updates(settings), note, *self.changes(before, settings))

    def restore_from_png(self, path: str | None, before: dict[str, Any] | None = None) -> tuple:
        """(the controls, what changed, the groups to open)."""
        if not path:
            return (*self._updates({}), gr.skip(), *(gr.skip() for _ in GROUP_TITLES))
        try:
            request, seed = read_settings(path)
        except ValueError as exc:  # the file is the field: say so, then what is wrong inside it
            raise refused(f"{PNG_LABEL}: {gr_error(exc).message}") from exc
        settings, left_out = self.for_model(settings_from_request(request))
        note, *groups = self.changes(before, settings)
        note = " ".join(filter(None, (f"Restored the settings of {Path(path).name} (seed {seed}).", left_out, note)))
        if request.forks:  # said here too, where the PNG was dropped; the path itself is kept by fork_path_of_png
            note = f"{note}\n\n{render.fork_path_note(request)}"
        return (*self._updates(settings), note, *groups)

    def fork_path_of_png(self, path: str | None) -> tuple:
        """A restored PNG that a fork made carries its path: keep it for Generate, which replays it, and say so.
        Outputs: the fork path, the note, the Forget button."""
        if not path:
            return gr.skip(), gr.skip(), gr.skip()
        request, _ = read_settings(path)  # already read once by restore_from_png, so valid
        if not request.forks:
            return None, "", gr.update(visible=False)
        return ([p.to_dict() for p in request.forks], render.fork_path_note(request),
                gr.update(visible=True))

    def share_link(self, *values: Any, request: gr.Request | None = None) -> str:
        settings = dict(zip(CONTROL_NAMES, values))
        try:
            request_from_settings(settings)  # only valid settings make a link
        except ValueError as exc:
            raise gr_error(exc) from exc
        base = "http://localhost:7860/"
        if request is not None:
            # The browser's page address (Referer) survives proxies and Spaces' iframes; API clients have none.
            page = request.headers.get("referer") or str(request.base_url)
            parts = urlsplit(page)
            base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        values = {name: read(name, value) for name, value in settings.items() if value is not None}
        link = f"{base}?{query_from_settings(values)}"
        if len(link) > MAX_LINK_CHARS:
            longest = max((name for name in values if isinstance(values[name], str)),
                          key=lambda name: len(query_from_settings({name: values[name]})))
            raise gr.Error(f"Link to these settings: it would be {len(link):,} characters long, and links hold at most "
                           f"{MAX_LINK_CHARS:,} (browsers and servers refuse longer ones). The longest text is "
                           f"{CONTROLS[longest].label}: {len(values[longest]):,} characters. Shorten it, or share a "
                           "final PNG instead: it carries every setting.", title="Link too long")
        return link

    def restore_from_query(self, request: gr.Request) -> tuple:
        params = dict(request.query_params) if request is not None else {}
        settings, problems = settings_from_query(params)
        settings, left_out = self.for_model(settings)
        for problem in problems:
            gr.Warning(f"Link: ignored {problem}")
        if left_out:
            gr.Warning(f"Link: {left_out}")
        return self._updates(settings)


def _control(component, name: str, value=None, **kwargs):
    """Control `name` as `component`, with its label, range and default from their one source: `controls.CONTROLS`
    (which reads pipeline's constants) and the request's own defaults."""
    control = CONTROLS[name]
    kwargs.setdefault("elem_id", f"ctl-{name}")
    if value is None:
        value = REQUEST_DEFAULTS[name]
    if component is FieldSlider:
        return component(*control.allowed, value=value, label=control.label, **kwargs)
    if component is FieldNumber:
        lo, hi = control.allowed
        return component(value=value, minimum=lo, maximum=hi, precision=0, label=control.label, **kwargs)
    if component in (FieldRadio, FieldDropdown):
        return component(render.CHOICES[name], value=value, label=control.label, **kwargs)
    return component(value=value, label=control.label, **kwargs)


def build_explore_tab(explore: Explore, default_size: int) -> tuple[dict, dict]:
    """The Explore tab's components, by control name (`c`) and by output name (`out`).

    Two columns: the controls, most-used first and the rest in collapsed groups; and the results (Generate,
    the status, the live images, the guidance plot), which stay in view on a desktop while the controls
    scroll (see `layout.CSS`). On a phone the columns stack, controls first.
    """
    c, out = {}, {}
    with gr.Row(equal_height=False, elem_id="explore"):
        with gr.Column(scale=2, min_width=320, elem_id="controls"):
            out["presets"] = gr.Dataset(
                label="Presets", components=[gr.Textbox(visible=False)], type="index",
                samples=[[p.title(explore.toy)] for p in explore.presets], samples_per_page=20, elem_id="presets",
            )
            out["preset_note"] = gr.Markdown(elem_id="preset-note")
            # What a preset, PNG or the Invert tab changed: beside the picker where it was chosen, not below the groups
            out["changed"] = gr.Markdown(elem_id="changed-note")
            toy = is_toy(explore.pipe)
            defaults = page_defaults(toy)
            c["prompt"] = _control(FieldTextbox, "prompt", defaults["prompt"], lines=2,
                                   info=render.CONTROL_INFO["prompt"])
            if toy:
                gr.Markdown(render.toy_words(), elem_id="toy-words")
                c["prompt_adherence"] = _control(FieldSlider, "prompt_adherence", explore.adherence_default, step=0.05,
                                                 info=render.ADHERENCE_INFO)
            else:  # a real model has no such setting: the request leaves it None, and the API offers no value
                c["prompt_adherence"] = gr.State(None)
            out["token_warning"] = gr.Markdown()
            c["mode"] = _control(FieldRadio, "mode")
            out["formula"] = gr.Markdown(render.formula(REQUEST_DEFAULTS["mode"]), latex_delimiters=render.LATEX)
            with gr.Group(visible=False) as out["negative_group"]:
                gr.Markdown(render.NEGATIVE_PROMPT_NOTE, elem_id="negative-note")
                c["negative_prompt"] = _control(FieldTextbox, "negative_prompt", defaults["negative_prompt"],
                                                info="Guidance steers away from it: its prediction replaces the baseline "
                                                "(custom negative direction), or only its part perpendicular to the "
                                                "prompt's guidance counts (Perp-Neg).")
                c["negative_prompt_2"] = _control(
                    FieldTextbox, "negative_prompt_2",
                    info="For text encoder 2. Empty: the same text as the negative direction prompt.")
            with gr.Group(visible=False) as out["weighted_group"]:
                for k in range(1, MAX_WEIGHTED_PROMPTS + 1):
                    with gr.Row():
                        c[f"weighted_prompt_{k}"] = _control(FieldTextbox, f"weighted_prompt_{k}",
                                                             defaults.get(f"weighted_prompt_{k}", ""), scale=3)
                        c[f"weight_{k}"] = _control(FieldSlider, f"weight_{k}", 7.5 if k == 1 else 0.0, step=0.25, scale=2)
                out["weights"] = gr.Markdown(render.weights_line([7.5]))
            for mode in render.MODES_WITH_PARAMS:  # each mode's own settings, as its table entry declares them
                with gr.Group(visible=False) as out[f"{mode.name}_params"], gr.Row():
                    for param in mode.params:
                        c[param.name] = _control(FieldSlider, param.name, param.default, step=param.step,
                                                 info=param.info)
            c["guidance_scale"] = _control(FieldSlider, "guidance_scale", step=0.5, info=render.CONTROL_INFO["guidance_scale"])
            with gr.Row():
                # min_width: on a phone the two stack, so the Scheduler's names are not cut off
                c["steps"] = _control(FieldSlider, "steps", step=1, min_width=200)
                c["scheduler"] = _control(FieldDropdown, "scheduler", min_width=200)
            c["eta"] = _control(FieldSlider, "eta", step=0.05, visible=False,
                                info=render.ETA_INFO)
            with gr.Row():
                c["seed"] = _control(FieldNumber, "seed", PAGE_DEFAULTS["seed"])
                c["num_seeds"] = _control(FieldSlider, "num_seeds", PAGE_DEFAULTS["num_seeds"], step=1,
                                          info="Consecutive seeds from Seed.")
            with gr.Accordion(GROUP_TITLES["text"], open=False, elem_id="group-text") as out["group_text"]:
                c["prompt_2"] = _control(FieldTextbox, "prompt_2", lines=1, info=render.CONTROL_INFO["prompt_2"])
                c["uncond"] = _control(FieldRadio, "uncond", info=render.CONTROL_INFO["uncond"])
            with gr.Accordion(GROUP_TITLES["schedule"], open=False, elem_id="group-schedule") as out["group_schedule"]:
                c["guidance_schedule"] = _control(FieldDropdown, "guidance_schedule")
                c["guidance_cutoff"] = _control(FieldSlider, "guidance_cutoff", step=0.05, visible=False,
                                                info="The cutoff schedule turns guidance off at this fraction of the run.")
                with gr.Row():
                    c["interval_start"] = _control(FieldSlider, "interval_start", step=0.05)
                    c["interval_stop"] = _control(FieldSlider, "interval_stop", step=0.05)
                c["guidance_rescale"] = _control(
                    FieldSlider, "guidance_rescale", step=0.05,
                    info="φ of Lin et al. (2023): pulls the guided prediction's spread back to the conditional one's.")
                out["scale_plot"] = gr.LinePlot(x="step", y="guidance scale", label="Guidance scale per step",
                                                height=180)
                out["passes"] = gr.Markdown()
            with gr.Accordion(GROUP_TITLES["size"], open=False, elem_id="group-size") as out["group_size"]:
                with gr.Row():
                    c["width"] = _control(FieldSlider, "width", default_size, step=SIZE_MULTIPLE)
                    c["height"] = _control(FieldSlider, "height", default_size, step=SIZE_MULTIPLE)
                c["init_image"] = FieldImage(label="Start image", type="filepath", image_mode=None,
                                             sources=["upload", "clipboard"], height=200,
                                             format="png")  # lossless: a drawn data item stays that item
                c["strength"] = _control(FieldSlider, "strength", step=0.05,
                                         info="How much noise to add: 0 keeps the image, 1 starts from (almost) pure noise.")
                if toy:
                    out["start_item"] = gr.Button(f"Start from a data item: {render.TOY_START_ITEM.caption}", size="sm")
                out["strength_info"] = gr.Markdown(explore.describe_strength(None, REQUEST_DEFAULTS["strength"],
                                                                             REQUEST_DEFAULTS["steps"]),
                                                   elem_id="strength-info")
            with gr.Accordion(GROUP_TITLES["previews"], open=False, elem_id="group-previews") as out["group_previews"]:
                c["preview"] = _control(FieldRadio, "preview", PAGE_DEFAULTS["preview"])
                with gr.Row():
                    c["preview_every"] = _control(FieldSlider, "preview_every", 1, step=1)
                    c["preview_source"] = _control(FieldRadio, "preview_source", "pred_x0")
                with gr.Row():
                    c["decompose"] = _control(FieldCheckbox, "decompose", False,
                                              info="Show one seed's unconditional, conditional and guided x̂₀.")
                    c["decompose_seed"] = _control(FieldNumber, "decompose_seed", PAGE_DEFAULTS["seed"],
                                                   info="One of the run's seeds; follows Seed.")
            with gr.Accordion(GROUP_TITLES["links"], open=False, elem_id="group-links") as out["group_links"]:
                with gr.Row():
                    out["link_btn"] = gr.Button("Copy link", size="sm")
                    out["link"] = gr.Textbox(label="Link to these settings", buttons=["copy"], interactive=False,
                                             info=f"At most {MAX_LINK_CHARS:,} characters: for long prompts, share a final PNG.")
                out["link_note"] = gr.Markdown(elem_id="link-note")
                out["png_in"] = FieldFile(label=PNG_LABEL, file_types=[".png"], type="filepath", height=120,
                                          elem_id="png-in")  # a PNG dropped on the results lands here too (layout.py)
        with gr.Column(scale=3, min_width=320, elem_id="results"):
            with gr.Row(elem_id="run-buttons"):
                out["generate"] = gr.Button("Generate", variant="primary", scale=3, min_width=80)
                out["stop"] = gr.Button("Stop", variant="stop", scale=1, min_width=60)
            out["status"] = gr.Markdown("Press **Generate**.", elem_id="status")
            out["start_note"] = gr.Markdown(elem_id="start-note")  # set when the Invert tab sends its noise here
            out["clear_start"] = gr.Button("Forget the inverted noise", visible=False, size="sm", elem_id="clear-start")
            out["fork_note"] = gr.Markdown(elem_id="fork-note")  # set when a restored PNG is a fork's
            out["clear_fork"] = gr.Button("Forget the fork path", visible=False, size="sm", elem_id="clear-fork")
            out["gallery"] = ServedGallery(
                label="Images", columns=4, format="jpeg", object_fit="contain", height="auto",
                buttons=["download", "fullscreen"], elem_id="images",
            )
            with gr.Row(equal_height=True, elem_id="revisit"):
                # Hidden until a run has previews: before that it had no range to offer.
                out["step_slider"] = FieldSlider(1, 2, value=2, step=1, label="Revisit step", visible=False, scale=4,
                                               buttons=[], elem_id="step-slider",
                                               info="Drag, or focus it and use the arrow keys: the images follow.")
                out["final_btn"] = gr.Button("Final images", visible=False, size="sm", scale=1, min_width=100)
            out["decomposition_note"] = gr.Markdown(visible=False, elem_id="decomposition-note")
            out["decomposition"] = ServedGallery(
                label="Decomposition", show_label=False, columns=4, format="jpeg", object_fit="contain",
                height=230, elem_id="decomposition", visible=False,
            )
            out["norm_note"] = gr.Markdown(elem_id="norm-note")
            out["norm_plot"] = gr.LinePlot(
                x="step", y=guidance_plot.Y, color="seed", **guidance_plot.labels("cfg"), x_title="step", sort=[],
                height=260, elem_id="norm-plot", visible=False,  # shown with its first point
            )
            out["whatif"] = build_whatif(explore)  # below the plot: the plot stays within a 900 px window
            out["downloads"] = gr.File(label="Final PNGs, settings embedded (restore them under Links and saved settings)",
                                       file_count="multiple", interactive=False, elem_id="downloads", height=110)
    out["invalid_style"] = gr.HTML("", elem_id="invalid-style", padding=False,  # marks the control it names
                                   js_on_load=KEEP_TYPED_VALUES)
    out["history"] = gr.State(None)
    out["fork_path"] = gr.State(None)  # a restored fork PNG's path (GenerationRequest.forks), replayed by Generate
    out["before"] = gr.State(None)  # the controls just before a preset, PNG or link replaced them
    # The running job's id, from the first update of its stream: Stop sends it back (see handlers.Jobs).
    out["run_id"] = gr.Textbox(label="Run id", visible=False)  # the controls just before a preset, PNG or link replaced them
    return c, out


# Gradio's slider clamps a typed value into its range when its number box loses focus (Math.min/max in its
# blur handler), so Steps 0 became 1 and the next Generate ran with a value nobody chose. The app checks every
# value itself and names the control (`ui.fields`): this keeps what was typed, by stopping the slider's blur
# handler from seeing the event (a listener on `window` in the capture phase runs before the input's own).
KEEP_TYPED_VALUES = """if (!window.cfgKeepTypedValues) { window.cfgKeepTypedValues = true;
    window.addEventListener('blur', (e) => { const t = e.target;
        if (t instanceof HTMLInputElement && t.type === 'number' && t.closest('.block')?.querySelector('input[type=range]'))
            e.stopImmediatePropagation(); }, true); }"""
SHOW_CHANGED = "() => { document.querySelector('#changed-note')?.scrollIntoView({block: 'nearest'}); }"
COPY_LINK = """async (link) => {
    if (!link) return '';
    try { await navigator.clipboard.writeText(link); return '✓ Copied the link to the clipboard.'; }
    catch (e) { return 'The browser did not allow copying: select the link above and copy it.'; } }"""


def wire_explore(demo: gr.Blocks, explore: Explore, c: dict, out: dict, start_latents: gr.State) -> None:
    """The Explore tab's events; `c` and `out` come from `build_explore_tab`."""
    controls = [c[name] for name in CONTROL_NAMES]
    groups = [out[f"group_{key}"] for key in GROUP_TITLES]
    run_inputs = controls + [c["init_image"], start_latents, out["fork_path"]]
    # The page checks the controls first, in an event with no outputs: a refused value raises there, so the
    # last run's images, slider and plot stay as they were instead of turning into error badges. Queued: an
    # event run outside the queue answers an error with HTTP 500, which the browser logs as a failed request.
    check = out["generate"].click(explore.bound("check_run"), inputs=run_inputs, api_visibility="private",
                                  show_progress="hidden")
    check.success(lambda: "", outputs=out["invalid_style"], api_visibility="private", queue=False,
                  show_progress="hidden")
    generated = check.success(
        explore.bound("generate"), inputs=run_inputs, outputs=[out[name] for name in GENERATE_OUTPUTS],
        api_name="generate", concurrency_id="gpu",
    )
    wire_whatif(explore, WhatIfPanel(explore), out["whatif"], c, out, check, generated,
                [out[name] for name in GENERATE_OUTPUTS])
    check.failure(explore.explain_refused, outputs=[out["status"], out["invalid_style"], *groups],
                  api_visibility="private", queue=False, show_progress="hidden")
    # Stop ends the run server-side; the run's own stream then says where it stopped (see Explore.stop).
    out["stop"].click(explore.stop, inputs=out["run_id"], api_name="stop", queue=False)
    revisit = [out["gallery"], out["decomposition"], out["decomposition_note"], out["final_btn"]]
    out["step_slider"].input(explore.show_step, inputs=[out["history"], out["step_slider"]], outputs=revisit,
                             api_name="show_step", trigger_mode="always_last", show_progress="hidden")
    out["final_btn"].click(explore.show_final, inputs=out["history"],
                           outputs=[out["gallery"], out["step_slider"], out["decomposition"], out["decomposition_note"],
                                    out["final_btn"]], api_name="show_final", show_progress="hidden")
    c["mode"].change(explore.describe_mode, inputs=c["mode"],
                     outputs=[out["formula"], out["negative_group"], out["weighted_group"],
                              *(out[f"{mode.name}_params"] for mode in render.MODES_WITH_PARAMS),
                              *(c[name] for name in render.CONTROL_INFO)], api_name="describe_mode")
    c["guidance_schedule"].change(explore.describe_guidance_schedule, inputs=c["guidance_schedule"],
                                  outputs=c["guidance_cutoff"], api_name="describe_guidance_schedule")
    c["decompose"].change(lambda on: (gr.update(visible=on), gr.update(visible=on)), inputs=c["decompose"],
                          outputs=[out["decomposition"], out["decomposition_note"]], api_name="describe_decomposition")
    gr.on([c["seed"].change, c["num_seeds"].change], explore.follow_seed,
          inputs=[c["seed"], c["num_seeds"], c["decompose_seed"]], outputs=c["decompose_seed"],
          api_name="follow_seed", show_progress="hidden")
    c["scheduler"].change(explore.describe_scheduler, inputs=c["scheduler"], outputs=c["eta"],
                          api_name="describe_scheduler")
    gr.on(
        [c[f"weight_{k}"].change for k in range(1, MAX_WEIGHTED_PROMPTS + 1)], explore.describe_weights,
        inputs=[c[f"weight_{k}"] for k in range(1, MAX_WEIGHTED_PROMPTS + 1)], outputs=out["weights"],
        api_name="describe_weights", show_progress="hidden",
    )
    gr.on(
        [demo.load] + [c[name].change for name in ("mode", "guidance_scale", "steps", "guidance_schedule", "guidance_cutoff",
                                                   "interval_start", "interval_stop", "strength")]
        + [c[param.name].change for mode in render.MODES_WITH_PARAMS for param in mode.params]  # e.g. zero-init steps
        + [c["init_image"].change],
        explore.bound("describe_schedule"), inputs=controls, outputs=[out["scale_plot"], out["passes"]],
        api_name="describe_schedule", show_progress="hidden",
    )
    gr.on(
        [c["init_image"].change, c["strength"].change, c["steps"].change], explore.describe_strength,
        inputs=[c["init_image"], c["strength"], c["steps"]], outputs=out["strength_info"], api_name="describe_strength",
        show_progress="hidden",
    )
    if "start_item" in out:
        out["start_item"].click(explore.start_item, inputs=[c["width"], c["height"]], outputs=c["init_image"],
                                api_name="start_item")
    c["init_image"].upload(explore.fit_image, inputs=c["init_image"], outputs=[c["width"], c["height"]],
                           api_name="fit_image")
    out["clear_start"].click(lambda: (None, "", gr.update(visible=False)), outputs=[start_latents, out["start_note"],
                             out["clear_start"]], api_name="clear_start")
    gr.on(
        [c[name].change for name in ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "mode")],
        explore.count_tokens, inputs=[c["prompt"], c["prompt_2"], c["negative_prompt"], c["negative_prompt_2"], c["mode"]],
        outputs=out["token_warning"], api_name="count_tokens", show_progress="hidden",
    )
    # Presets and PNGs: first note the controls as they are, to say afterwards what changed.
    out["presets"].click(explore.snapshot, inputs=controls, outputs=out["before"], api_visibility="private",
                         queue=False, show_progress="hidden").then(
        explore.load_preset, inputs=[out["presets"], out["before"]],
        outputs=[*controls, out["preset_note"], out["changed"], *groups], api_name="load_preset")
    out["link_btn"].click(explore.bound("share_link"), inputs=controls, outputs=out["link"], api_name="share_link").then(
        None, inputs=out["link"], outputs=out["link_note"], js=COPY_LINK)
    fork_outputs = [out["fork_path"], out["fork_note"], out["clear_fork"]]
    restored = out["png_in"].upload(explore.snapshot, inputs=controls, outputs=out["before"], api_visibility="private",
                                    queue=False, show_progress="hidden").then(
        explore.restore_from_png, inputs=[out["png_in"], out["before"]], outputs=[*controls, out["changed"], *groups],
        api_name="restore_from_png")
    restored.success(explore.fork_path_of_png, inputs=out["png_in"], outputs=fork_outputs, api_visibility="private",
                     queue=False, show_progress="hidden")
    # The PNG may have been dropped at the bottom of the controls or on the results: show what it changed.
    restored.success(None, js=SHOW_CHANGED, api_visibility="private", queue=False, show_progress="hidden")
    # A preset, or the button, leaves the restored fork path behind: Generate then runs the controls alone.
    for event in (out["presets"].click, out["clear_fork"].click):
        event(lambda: (None, "", gr.update(visible=False)), outputs=fork_outputs, api_visibility="private",
              queue=False, show_progress="hidden")
    demo.load(explore.restore_from_query, outputs=controls, api_name="restore_from_url")
