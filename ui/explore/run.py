"""The run room: the controls -> a validated request -> a worker-thread `Run` -> streamed updates; Stop; the final
PNGs; and, when the page refuses a value, what it says and which control it marks."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from pipeline import GenerationRequest, RunCache
from pipeline import fork as whatif_fork
from pipeline.whatif import forked_request
from pipeline.memory import is_out_of_memory
from pipeline.metadata import save_png
from pipeline.models import memory_choice
from pipeline.previews import make_preview_decoder
from pipeline.uploads import load_image

from .. import render
from ..controls import BY_LABEL, CONTROL_NAMES, read, request_from_settings
from ..fields import Refused, answers_refusals, gr_error, refusal_in
from ..handlers import gpu, request_gpu_seconds, takes_controls
from ..streaming import Run, RunInterrupted
from .defaults import CONTROL_GROUPS, GROUP_TITLES
from .updates import RunUpdates

logger = logging.getLogger(__name__)

RUNS_KEPT = 32  # final-PNG folders kept on disk; Gradio's own cache is bounded by delete_cache


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def marked(label: str | None) -> tuple[str, list[str]]:
    """The page style that outlines the Explore control labelled `label`, and the groups to open to show it."""
    names = [BY_LABEL[label]] if label and BY_LABEL.get(label) in CONTROL_NAMES else []
    # inside the block: a control in a row is clipped by the row's box, which hid an outline drawn outside it
    style = "".join(f"#ctl-{name}{{outline:2px solid var(--error-border-color, #ef4444);outline-offset:-2px}}"
                    for name in names)
    groups = [GROUP_TITLES[CONTROL_GROUPS[n]] for n in names if n in CONTROL_GROUPS]
    return (f"<style>{style}</style>" if style else ""), groups


class RunRoom:
    """Starting, streaming and stopping runs (a part of `Explore`, which holds the models and handlers)."""

    def decoder(self, name: str):
        return make_preview_decoder(name, self.pipe, self.taesd)

    def admit(self, cache: RunCache) -> RunCache:
        return self.handlers.whatif.admit(cache)

    def bound(self, name: str):
        """A handler bound to this instance, with the controls as named parameters (see `takes_controls`)."""
        return takes_controls(getattr(self, name))

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
        preview = get("preview", "linear")
        self.decoder(preview)  # cheap: a decoder that is not loaded fails here
        if check_only:
            return None
        return self.make_run(request, preview, every, source, self.handlers.whatif.new(self.pipe, request))

    def make_run(self, request: GenerationRequest, preview: str, every: int, source: str, cache: RunCache | None,
                 *, fork=None, history=None, start: int = 0):
        """A run (not started) on the backend: a thread here, or a worker (`handlers.remote`). `fork`: (the parent's
        cache, the step, the new settings), continued after that step; `history` and `start` then say where."""
        if self.handlers.remote is not None:
            if fork is not None:
                parent, step, new = fork
                fork = (parent, step, forked_request(parent, step, new))
            return self.handlers.remote.run(request, preview, every, source, cache, fork=fork, history=history,
                                            start=start)
        events = None if fork is None else (lambda: whatif_fork(self.pipe, *fork))
        return Run(self.pipe, request, self.decoder(preview), every, source=lambda event: getattr(event, source),
                   cache=cache, events=events, history=history, start=start)

    def generate(self, *values: Any, init_image=None, start_latents=None, fork_path=None,
                 request: gr.Request = None) -> Iterator[tuple]:
        """Stream (gallery, status, step slider, plot, downloads, history, decomposition) while it denoises."""
        settings = dict(zip(CONTROL_NAMES, values))
        try:
            run = self.start_run(settings, init_image, start_latents, forks=fork_path)
        except ValueError as exc:
            raise gr_error(exc) from exc
        yield from self.stream_job(run, request)

    def stream_job(self, run: Run, request: gr.Request | None, intro: str | None = None) -> Iterator[tuple]:
        """`stream` as the session's job: Stop (and a newer run of the session) reaches it."""
        with self.jobs.running(request, run.stop) as run_id:
            yield from self.stream(run, run_id, intro)

    def check_run(self, *values: Any, init_image=None, start_latents=None, fork_path=None) -> None:
        """The page validates before it runs: a refused value then leaves the last results as they are (an error
        in the run's own event would turn every output into an error badge)."""
        try:
            self.start_run(dict(zip(CONTROL_NAMES, values)), init_image, start_latents, check_only=True,
                           forks=fork_path)
        except ValueError as exc:
            raise gr_error(exc) from exc

    @answers_refusals
    def check_and_mark(self, *values: Any, init_image=None, start_latents=None, fork_path=None) -> tuple:
        """Generate's first event, answered in one response: (status, mark, groups to open, run token).

        Valid controls: the last mark cleared and a new run token, whose change starts the run
        (`wiring._wire_run`). A refusal (one of the inputs' own, which reaches this in their place, or the
        request's): the status says nothing ran and why, its control is marked and its group opened, a message
        says it too, and the token stays, so nothing runs. The event itself succeeds: a failed one would put its
        outputs, the status among them, in an error state; and no second event asks which control it was."""
        refusal = refusal_in(*values, init_image, start_latents, fork_path)
        if refusal is None:
            try:
                self.check_run(*values, init_image=init_image, start_latents=start_latents, fork_path=fork_path)
            except Refused as exc:
                refusal = exc
        if refusal is None:
            return (gr.skip(), "", *(gr.skip() for _ in GROUP_TITLES), uuid.uuid4().hex)
        logger.info("refused: %s", refusal.message)
        gr.Warning(refusal.message, title=refusal.title)
        return (*self.explain_invalid(refusal.message, refusal.label), gr.skip())

    def explain_invalid(self, message: str | None, label: str | None = None) -> tuple:
        """After a refused run: the status says nothing ran and why; the control labelled `label` is marked, its
        group opened. `message` is the error as the page showed it ("Seed: must be ...")."""
        style, groups = marked(label)
        return (render.nothing_ran((message or "").strip()), style,
                *(gr.update(open=True) if title in groups else gr.skip() for title in GROUP_TITLES.values()))

    def stop(self, run_id: str) -> None:
        """Stop the run with this id (the first update of its stream carries it) within one step; the run's
        own stream then reports where it stopped."""
        if not self.jobs.stop(run_id):
            gr.Info("Nothing to stop: that run has ended (or has not started yet).")

    @gpu(duration=lambda self, run, run_id="", intro=None: request_gpu_seconds(run.request))
    def stream(self, run: Run, run_id: str = "", intro: str | None = None) -> Iterator[tuple]:
        """Run `run` and stream its updates, in the order of RUN_OUTPUTS; `intro`: the first status line."""
        updates = RunUpdates(run.request, run.history)
        yield updates.first(intro, run_id)
        last = None
        try:
            for frame in run.start().frames():
                last = frame
                yield updates.frame(frame, lambda images: self._save(run.request, images))
        except RunInterrupted as exc:  # a worker lost, a full queue: said in the status, not as a failed run
            yield updates.stopped(last, str(exc))
            return
        except Exception as exc:
            if not is_out_of_memory(exc):
                logger.exception("generation failed")
            raise gr_error(exc, memory=memory_choice(self.pipe).mode) from exc
        finally:
            run.stop()  # the page's Stop, a client's cancel or a closed tab all end the worker within a step
        if run.stopped and (last is None or last.images is None):
            yield updates.stopped(last)

    def _save(self, request: GenerationRequest, images) -> list[Path]:
        folder = self.output_dir / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True, exist_ok=True)
        # a worker's final images come as PNG bytes with their settings already in them (serving.replica_run)
        paths = [save_png(img, folder / f"seed-{seed}.png", request, seed, self.model_name)
                 if not isinstance(img, bytes) else _write(folder / f"seed-{seed}.png", img)
                 for img, seed in zip(images, request.seeds)]
        with self._lock:  # keep the newest RUNS_KEPT folders; Gradio copies what it serves into its own cache
            folders = sorted(self.output_dir.iterdir(), key=lambda p: p.stat().st_mtime)
            for old in folders[:-RUNS_KEPT]:
                shutil.rmtree(old, ignore_errors=True)
            if self.handlers.storage is not None:
                self.handlers.storage.prune()
        return paths
