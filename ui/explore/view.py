"""The Explore tab's components, typed: each event names the components it reads and updates."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import gradio as gr

from ..controls import CONTROL_NAMES
from ..run_stream import RUN_OUTPUTS
from ..whatif import WhatIfView
from .defaults import GROUP_TITLES

Component = Any  # a Gradio component (gradio's own classes share no narrower base that Events type)


@dataclass(frozen=True)
class Groups:
    """The collapsed groups, one per `GROUP_TITLES` key."""

    text: gr.Accordion
    schedule: gr.Accordion
    size: gr.Accordion
    previews: gr.Accordion
    links: gr.Accordion

    def ordered(self) -> list[gr.Accordion]:
        """In `GROUP_TITLES` order, the order the handlers return their updates in."""
        return [getattr(self, key) for key in GROUP_TITLES]


@dataclass(frozen=True)
class ExploreView:
    """Every component of the Explore tab that an event reads or updates."""

    controls: Mapping[str, Component]  # by control name (`CONTROL_NAMES`): the controls are data (`ui.controls`)
    mode_params: Mapping[str, gr.Group]  # by mode name: each mode's own parameters
    groups: Groups
    whatif: WhatIfView
    # the controls column
    presets: gr.Dataset
    preset_note: gr.Markdown
    changed: gr.Markdown
    token_warning: gr.Markdown
    formula: gr.Markdown
    negative_group: gr.Group
    weighted_group: gr.Group
    weights: gr.Markdown
    scale_plot: gr.LinePlot
    passes: gr.Markdown
    init_image: gr.Image
    start_item: gr.Button | None  # the toy world's only
    strength_info: gr.Markdown
    link_btn: gr.Button
    link: gr.Textbox
    link_note: gr.Markdown
    png_in: gr.File
    # the results column
    generate: gr.Button
    stop: gr.Button
    status: gr.Markdown
    start_note: gr.Markdown
    clear_start: gr.Button
    fork_note: gr.Markdown
    clear_fork: gr.Button
    gallery: gr.Gallery
    step_slider: gr.Slider
    final_btn: gr.Button
    decomposition_note: gr.Markdown
    decomposition: gr.Gallery
    norm_note: gr.Markdown
    norm_plot: gr.LinePlot
    downloads: gr.File
    # page-wide and per session
    invalid_style: gr.HTML
    history: gr.State
    fork_path: gr.State  # a restored fork PNG's path (GenerationRequest.forks), replayed by Generate
    before: gr.State  # the controls just before a preset, PNG or link replaced them
    run_id: gr.Textbox  # the running job's id, from the first update of its stream: Stop sends it back
    run_token: gr.Textbox  # set anew by Generate's check when the controls are valid: its change starts the run

    def control_list(self) -> list[Component]:
        """The controls in `CONTROL_NAMES` order, the order every handler takes their values in."""
        return [self.controls[name] for name in CONTROL_NAMES]

    def run_outputs(self) -> list[Component]:
        """A run's streamed outputs, in `RUN_OUTPUTS` order."""
        return [getattr(self, name) for name in RUN_OUTPUTS]

    def named(self) -> dict[str, Component]:
        """The controls and this view's own components by name (the Invert tab names what it sets as data)."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("controls", "mode_params")}
        return {**own, **self.controls}
