"""The run-streaming interface: what a panel that starts runs of its own (the what-if panel's forks) needs of the
page that streams them, so that it depends on this and not on the Explore tab (which builds the panel).

A streamed run update is a tuple in `RUN_OUTPUTS` order, the outputs of Generate's event (and of a fork's, which
streams into the same components).
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol

import gradio as gr

from pipeline import RunCache
from pipeline.previews import PreviewDecoder

from .streaming import Run

# What one streamed update carries, in the order of the event's outputs (API clients get them without the
# State: history).
RUN_OUTPUTS = ("gallery", "status", "step_slider", "norm_plot", "downloads", "history", "decomposition",
               "run_id", "final_btn", "norm_note", "decomposition_note")


def run_update(**updates: Any) -> tuple:
    """One streamed update in `RUN_OUTPUTS` order; an output not named is left as it is (`gr.skip`)."""
    unknown = set(updates) - set(RUN_OUTPUTS)
    if unknown:  # a misspelt output would otherwise be skipped without a word
        raise TypeError(f"not a run output: {', '.join(sorted(unknown))}")
    return tuple(updates.get(name, gr.skip()) for name in RUN_OUTPUTS)


def add_to_status(update: tuple, note: str) -> tuple:
    """`update` with `note` as a paragraph after its status line."""
    index = RUN_OUTPUTS.index("status")
    return (*update[:index], f"{update[index]}\n\n{note}", *update[index + 1:])


class RunStreams(Protocol):
    """What the what-if panel needs of the page whose runs it recombines and forks."""

    pipe: Any

    def decoder(self, name: str) -> PreviewDecoder:
        """The preview decoder called `name` (a `Preview decoder` choice)."""

    def admit(self, cache: RunCache) -> RunCache:
        """`cache` within the server's what-if memory budget (`handlers.WhatIfStore`)."""

    def make_run(self, request, preview: str, every: int, source: str, cache: RunCache | None, *, fork=None,
                 history=None, start: int = 0) -> Run:
        """A run (not started) where the page's runs execute; `fork`: (parent cache, step, new settings)."""

    def stream_job(self, run: Run, request: gr.Request | None, intro: str) -> Iterator[tuple]:
        """Run `run` as the session's job (Stop reaches it) and stream its updates, starting with `intro`."""
