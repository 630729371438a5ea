"""The revisit room: the last run's stored previews at any step (the Revisit step slider), and back to its final
images."""

from __future__ import annotations

import gradio as gr

from .. import render
from ..streaming import History
from .updates import most_different


class RevisitRoom:
    """Showing a finished (or stopped) run again, from its `History` (a part of `Explore`)."""

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
        decomposition, note = most_different(history)
        return gallery, gr.update(value=history.total), decomposition, note, gr.update(visible=False)
