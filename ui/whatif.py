"""The Explore page's what-if panel (issue 10): re-guide the revisited step instantly, and fork the run from it.

Every run records its predictions into a `pipeline.whatif.RunCache` (kept in the session's `History`, within the
server-wide `WhatIfStore`). The what-if slider recombines the revisited step's cached predictions at another scale
or mode: no UNet call and no queue job, so it answers as the slider moves. "Continue from this step" forks the run
(a queued run of the remaining steps, streamed like Generate) and adds a branch; "Branches" returns to any branch,
whose history the step slider, the what-if and further forks then use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr
import numpy as np
from PIL import Image

from pipeline import whatif
from pipeline.models import is_toy
from pipeline.guidance import GUIDANCE_MODES
from pipeline.request import GUIDANCE_SCALE_RANGE, RequestError

from . import render, whatif_render
from .controls import read
from .fields import FieldDropdown, FieldRadio, FieldSlider, gr_error
from .run_stream import RunStreams, add_to_status, run_update
from .served import ServedGallery
from .streaming import History

NOTHING = "Generate a run first: the what-if panel recombines its cached predictions."
RUNNING = "A new run is under way: the panel turns to it when it ends."
LABELS = {"guidance_scale": "What-if scale", "mode": "What-if mode", "step": "Revisit step"}
SHOW_RUN = "() => { document.querySelector('#run-buttons')?.scrollIntoView({block: 'start', behavior: 'smooth'}); }"
MAX_GAIN = 16  # the Δ image's largest amplification


def _error(exc: Exception) -> gr.Error:
    return gr_error(exc, LABELS)


def difference_image(new: Image.Image, old: Image.Image, seed: int) -> tuple[Image.Image, str]:
    """what-if minus run, mid-grey where they agree, amplified by a power of two (at most 16, said in the caption)
    so that the largest difference nearly spans the range: a small change of scale is still seen."""
    a, b = (np.asarray(image.convert("RGB"), dtype=np.int16) for image in (new, old))
    largest = int(np.abs(a - b).max())
    gain = 1
    while largest and gain < MAX_GAIN and largest * gain * 2 <= 127:
        gain *= 2
    image = Image.fromarray(np.clip(128 + (a - b) * gain, 0, 255).astype(np.uint8))
    return image, f"seed {seed} · Δ" + (f" ×{gain}" if gain > 1 else "")


def same_ending(parent: History, child: History) -> tuple[list[int], list[int]]:
    """The seeds whose final image in `child` is pixel for pixel the one in `parent`, and the seeds whose is not."""
    same, different = [], []
    for seed, a, b in zip(child.seeds, child.finals, parent.finals):
        with Image.open(a) as x, Image.open(b) as y:
            equal = x.size == y.size and np.array_equal(np.asarray(x.convert("RGB")), np.asarray(y.convert("RGB")))
        (same if equal else different).append(seed)
    return same, different


class WhatIfPanel:
    """The panel's behaviour, over a page that streams runs (`RunStreams`: the Explore tab's pipeline, decoders,
    run streaming and PNGs)."""

    def __init__(self, runs: RunStreams) -> None:
        self.runs = runs

    @staticmethod
    def _step(history: History, step: float) -> int:
        """The cached step nearest to the revisited one (every step is kept unless the run is over the budget)."""
        cache = history.whatif
        if cache.dropped:
            cache.entry(int(step))  # raises the library's own refusal, which names the step
        if not cache.steps:
            raise RequestError("step", "this run kept no step (it stopped before its first step, or had none)")
        return min(cache.steps, key=lambda s: (abs(s - step), s))

    def refresh(self, history: History | None):
        """After a run: the panel shows (where the run was cached), starts at the run's own scale and mode, and
        its branches start with the run alone. Outputs: group, scale, mode, branches, branch list, gallery, summary."""
        cache = None if history is None else history.whatif
        if cache is None or not cache.steps:
            return (gr.update(visible=False), gr.skip(), gr.skip(), [], gr.update(choices=[], value=None), [],
                    NOTHING)
        last = cache.entry(cache.steps[-1])
        # The modes of the step that computed the most predictions (outside a guidance interval a step has one).
        modes = cache.modes_at(max(cache.steps, key=lambda s: (len(cache.entry(s).predictions), s)))
        choices = [(render.mode_label(name), name) for name in GUIDANCE_MODES if name in modes]
        return (gr.update(visible=True), last.settings.guidance_scale, gr.update(choices=choices, value=last.settings.mode),
                [history], gr.update(choices=[history.name], value=history.name), [],
                whatif_render.whatif_hint(len(cache.steps), history.total, cache.stride))

    def preview(self, history: History | None, step: float, scale: float, mode: str, decoder: str):
        """The revisited step's x̂₀ for every seed at the what-if scale and mode, each beside its difference from
        the recorded one, and a table of what changed. Outputs: gallery, summary."""
        if history is None or history.whatif is None:
            return [], NOTHING
        try:
            scale, mode = read("guidance_scale", scale), read("mode", mode)
            step = self._step(history, step)
            alt = whatif(history.whatif, step, scale, mode)
            decode = self.runs.decoder(read("preview", decoder or "linear"))
        except ValueError as exc:
            raise _error(exc) from exc
        recorded = history.whatif.entry(step)
        new, old = decode(alt.pred_x0), decode(recorded.pred_x0)
        gallery = []
        for seed, a, b in zip(history.seeds, new, old):
            gallery.append((a, f"seed {seed} · s {alt.scale:g} · step {step}"))
            gallery.append(difference_image(a, b, seed))
        return gallery, whatif_render.whatif_summary(alt, history.seeds, recorded.scale, recorded.settings.mode)

    def fork(self, history: History | None, step: float, scale: float, mode: str, decoder: str, every: float,
             source: str, request: gr.Request = None) -> Iterator[tuple]:
        """Continue the run from the revisited step with the what-if settings: steps k+1..N, streamed like
        Generate (the same outputs). Its history holds the run's previews up to k, then the fork's own."""
        try:
            scale, mode = read("guidance_scale", scale), read("mode", mode)
            every, source = read("preview_every", every), read("preview_source", source)
            preview = read("preview", decoder or "linear")
            self.runs.decoder(preview)  # a decoder that is not loaded fails here, before the fork
        except ValueError as exc:
            raise _error(exc) from exc
        if history is None or history.whatif is None:  # as Stop with nothing running: said, not an error
            yield run_update(status=whatif_render.nothing_to_continue())
            return
        parent = history.whatif
        try:
            step = self._step(history, step)
            if step >= history.total:
                raise RequestError("step", f"continue from a step before the last: 1 to {history.total - 1}, "
                                           f"got {step}")
            new = dataclasses.replace(parent.settings_at(step), guidance_scale=scale, mode=mode)
            child = self.runs.admit(parent.branch(step, new))
        except ValueError as exc:
            raise _error(exc) from exc
        forked = History(
            every=history.every, total=history.total, seeds=history.seeds, decompose_seed=history.decompose_seed,
            mode=child.request.settings_at(step).mode, whatif=child,
            frames={s: f for s, f in history.frames.items() if s <= step},
            norms={s: n for s, n in history.norms.items() if s <= step},
            decompositions={s: d for s, d in history.decompositions.items() if s <= step},
            spreads={s: d for s, d in history.spreads.items() if s <= step},
        )
        run = self.runs.make_run(child.request, preview, every, source, child, fork=(parent, step, new),
                                 history=forked, start=step)
        for update in self.runs.stream_job(run, request, whatif_render.forking(forked.name, step, history.total)):
            if forked.finals and history.finals and not forked.ending:  # the final images: compare with the parent's
                forked.ending = whatif_render.fork_ending(forked.name, step, *same_ending(history, forked),
                                                   is_toy(self.runs.pipe))
                update = add_to_status(update, forked.ending)
            yield update

    def follow(self, history: History | None, step: float, scale: float, mode: str, decoder: str):
        """After a fork or a return to a branch, the what-if shows that branch at the revisited step, under what a
        fork found (its ending), instead of the last what-if of the branch before. Outputs: gallery, summary."""
        if history is None or history.whatif is None or not history.whatif.steps:
            return [], NOTHING
        gallery, summary = self.preview(history, step, scale, mode, decoder)
        head = f"**Branch: {history.name}.**" + (f" {history.ending}" if history.ending else "")
        return gallery, f"{head}\n\n{summary}"

    def add_branch(self, history: History | None, branches: list[History] | None):
        """After a fork: a finished one joins the branches (replacing one of the same path). Outputs: branches,
        branch list."""
        branches = list(branches or [])
        if history is None or not history.finals or any(b is history for b in branches):
            return gr.skip(), gr.skip()
        branches = [b for b in branches if b.name != history.name] + [history]
        return branches, gr.update(choices=[b.name for b in branches], value=history.name)

    def show_branch(self, branches: list[History] | None, name: str):
        """Return to a branch: its final images and PNGs, and its history for the step slider, what-if and forks.
        Outputs: gallery, history, downloads, step slider, status, Final images button."""
        branch = next((b for b in branches or [] if b.name == name), None)
        if branch is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        gallery = gr.update(value=[(path, render.caption(seed)) for path, seed in zip(branch.finals, branch.seeds)],
                            label=whatif_render.images_label(branch.name))
        slider = gr.update(value=branch.total) if len(branch.frames) > 1 else gr.skip()
        status = whatif_render.showing_branch(branch.name) + (f" {branch.ending}" if branch.ending else "")
        return gallery, branch, branch.finals or None, slider, status, gr.update(visible=False)


@dataclass(frozen=True)
class WhatIfView:
    """The panel's components."""

    group: gr.Accordion
    scale: gr.Slider
    mode: gr.Dropdown
    gallery: gr.Gallery
    summary: gr.Markdown
    fork: gr.Button
    branches: gr.Radio
    branch_list: gr.State

    def refreshed(self) -> list[Any]:
        """What `WhatIfPanel.refresh` updates, in its order."""
        return [self.group, self.scale, self.mode, self.branch_list, self.branches, self.gallery, self.summary]


def build_whatif() -> WhatIfView:
    """The panel's components, placed where it is called (hidden until a run has been cached)."""
    ui: dict[str, Any] = {}
    with gr.Accordion("What-if at the revisited step: re-guide it instantly, or continue from it", open=False,
                      visible=False, elem_id="whatif-panel") as ui["group"]:
        with gr.Row():
            ui["scale"] = FieldSlider(*GUIDANCE_SCALE_RANGE, value=7.5, step=0.5, label="What-if scale", scale=3,
                                      elem_id="whatif-scale",
                                      info="Recombines the step's cached predictions: no UNet call, no queue.")
            ui["mode"] = FieldDropdown(render.MODE_CHOICES, value="cfg", label="What-if mode", scale=2, min_width=160,
                                       info="Modes this run's predictions allow.")
        ui["gallery"] = ServedGallery(label="What-if x̂₀ and Δ from the run's", columns=4, format="jpeg",
                                      object_fit="contain", height=200, elem_id="whatif")
        ui["summary"] = gr.Markdown(NOTHING, elem_id="whatif-summary")
        with gr.Row(equal_height=False):
            ui["fork"] = gr.Button("Continue from this step", scale=1, min_width=160, elem_id="whatif-fork")
            ui["branches"] = FieldRadio([], label="Branches", scale=2, min_width=200, elem_id="whatif-branches",
                                        info="The run and its forks: pick one to return to it.")
    ui["branch_list"] = gr.State([])
    return WhatIfView(**ui)
