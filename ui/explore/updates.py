"""What one run shows as it streams: its first update (which clears the last run's), one per frame, the final
images, and where a stopped run ended. Each is a tuple in `RUN_OUTPUTS` order (`run_update`)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from pipeline import GenerationRequest

from .. import guidance_plot, render, whatif_render
from ..run_stream import run_update
from ..streaming import Frame, History


def most_different(history: History) -> tuple:
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


class RunUpdates:
    """The updates of one run, over its request and its (growing) history."""

    def __init__(self, request: GenerationRequest, history: History) -> None:
        self.request, self.history = request, history
        self.decomposed = request.decompose_seed is not None
        self.plotted = 0  # steps measured when the plot was last sent

    def plot(self, **labels):
        """The guidance-size plot, hidden while it has no point. It is never sent an empty (or null) table: once
        drawn, a plot given one warns of an "infinite extent" in the console at its next data (measured)."""
        data = guidance_plot.table(self.history.norms, self.request.seeds)
        return gr.update(visible=False, **labels) if data.empty else gr.update(value=data, visible=True, **labels)

    def new_points(self):
        """The plot when a new step has been measured since it was last sent (it fills in as the run goes)."""
        if len(self.history.norms) == self.plotted:
            return gr.skip()
        self.plotted = len(self.history.norms)
        return self.plot()

    def slider(self, step: int, total: int):
        """The Revisit step slider over the steps that have previews; hidden when there are none."""
        frames = self.history.frames
        if len(frames) < 2:  # nothing to move between (a 1-step run, or Stop before a preview)
            return gr.update(visible=False)
        return gr.update(minimum=min(frames), maximum=max(step, min(frames) + 1), value=step,
                         visible=True, interactive=True)  # the page refuses a slider whose minimum is its maximum

    def first(self, intro: str | None, run_id: str) -> tuple:
        """A new run clears what belonged to the last one: its plot, files, and step history."""
        request, decomposed = self.request, self.decomposed
        note = (render.decomposition_note(request.decompose_seed, None, self.history.total, None, request.mode)
                if decomposed else "")
        return run_update(
            status=intro or render.starting(request), step_slider=gr.update(visible=False),
            norm_plot=self.plot(**guidance_plot.labels(request.mode)), downloads=None,
            gallery=gr.update(label=whatif_render.images_label(self.history.name)),  # the branch this run's images show
            history=None, decomposition=gr.update(value=[], visible=decomposed), final_btn=gr.update(visible=False),
            run_id=run_id, norm_note=guidance_plot.note(request),
            decomposition_note=gr.update(value=note, visible=decomposed),
        )

    def frame(self, frame: Frame, save) -> tuple:
        """The update for one frame; `save(images)` writes the final PNGs and returns their paths."""
        status = render.status(frame.step, frame.total, frame.steps_per_second, done=frame.images is not None,
                               unet_chunks=frame.unet_chunks)
        norm_plot = self.new_points()
        decomposition = note = gr.skip()
        if frame.decomposition:
            decomposition = render.decomposition_gallery(frame.decomposition)
            note = render.decomposition_note(self.request.decompose_seed, frame.step, frame.total,
                                             frame.decomposition, self.request.mode)
        if frame.images is not None:
            if self.decomposed:
                decomposition, note = most_different(self.history)
            return self.final(frame, status, save(frame.images), norm_plot, decomposition, note)
        if frame.previews is None:
            return run_update(status=status, norm_plot=norm_plot)
        seeds = self.request.seeds
        gallery = [(img, render.caption(s, frame.step, frame.total)) for img, s in zip(frame.previews, seeds)]
        return run_update(gallery=gallery, status=status, norm_plot=norm_plot, decomposition=decomposition,
                          decomposition_note=note)

    def final(self, frame: Frame, status: str, paths: list[Path], norm_plot, decomposition, note) -> tuple:
        """The final images (the PNGs, served as files), and for the toy world where each seed landed."""
        history, seeds = self.history, self.request.seeds
        history.finals = [str(p) for p in paths]
        off = [False] * len(seeds)
        if frame.landed:  # the toy world says where each seed landed, and which left its data
            status += "\n\n" + render.landing_note(frame.landed, seeds, self.request)
            off = history.off_data = [not spot.on_data for spot in frame.landed]
        return run_update(
            gallery=[(str(p), render.caption(s, off_data=o)) for p, s, o in zip(paths, seeds, off)], status=status,
            step_slider=self.slider(frame.total, frame.total), norm_plot=norm_plot,
            downloads=[str(p) for p in paths], history=history, decomposition=decomposition,
            final_btn=gr.update(visible=False), decomposition_note=note,
        )

    def stopped(self, last: Frame | None, why: str = "") -> tuple:
        """Where a run stopped before its final images; `why`, where it was not the person's Stop."""
        step, total = (last.step, last.total) if last else (0, self.history.total)
        status = f"{why}\n\n{render.stopped(step, total)}" if why else render.stopped(step, total)
        return run_update(status=status, step_slider=self.slider(max(step, 1), total),
                          norm_plot=self.plot(), history=self.history)
