"""The Distribution tab's page: its inputs, its results column and their events (the behaviour is
`distribution_tab.Distributions`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipeline.distribution import AXES, MAX_SCALES
from pipeline.loop import unavailable_modes

from . import distribution_render as draw
from .controls import TAB_CONTROLS
from .distribution_tab import (AXIS_LABELS, NO_AXIS, NO_TARGET, OUTPUTS, TOY_MIN_SEEDS, TOY_SIZE, Distributions,
                               progress_html)
from .render import CONTROL_INFO, MODE_CHOICES, SCHEDULER_CHOICES, mode_label
from .served import ServedGallery
from .fields import FieldCheckbox, FieldDropdown, FieldRadio, FieldSlider, FieldTextbox

INTRO = ("Run many seeds at several guidance scales and measure the distribution they land on: the same seeds at "
         "every scale, so the differences between scales are guidance, not noise. ")
TOY_INTRO = ("In the toy world the data is 96 known items, so every number here is **exact**: where each seed "
             "landed, against the data's p(x|c), the toy model's own pₐ(x|c) (it learned the prompt only "
             "partly: *Lab prompt adherence*), and the tilted pₐ(x|c)ˢ p(x)¹⁻ˢ that \"sampling the sharpened "
             "model\" would give, which CFG does not sample (Bradley & Nakkiran 2024; Chidambaram et al. 2024).")


MODEL_INTRO = ("**No exact target exists on this model**, so the tab shows the samples and diversity proxies "
               "(below). The lab presets, and the exact measurements, are the toy world's (`--model toy`).")


def _wrapped(lab: Distributions):
    """The run handler with one named parameter per input this page has (the API's names), and gr.Request."""
    if lab.toy:
        def run_lab_toy(prompt: str, prompt_2: str, n_seeds: float, scales: str, mode: str, scheduler: str,
                        eta: float, steps: float, size: float, adherence: float, axis: str, axis_values: str,
                        exact_start: bool, request: gr.Request):
            yield from lab.run(prompt, prompt_2, n_seeds, scales, mode, scheduler, eta, steps, size, adherence,
                               axis, axis_values, exact_start, request=request)
        return run_lab_toy

    def run_lab_model(prompt: str, prompt_2: str, n_seeds: float, scales: str, mode: str, scheduler: str,
                      eta: float, steps: float, size: float, axis: str, axis_values: str, request: gr.Request):
        yield from lab.run(prompt, prompt_2, n_seeds, scales, mode, scheduler, eta, steps, size, None, axis,
                           axis_values, False, request=request)
    return run_lab_model


def _slider(name: str, value, lo=None, hi=None, **kwargs) -> FieldSlider:
    control = TAB_CONTROLS[name]
    low, high = control.allowed
    return FieldSlider(low if lo is None else lo, high if hi is None else hi, value=value, label=control.label,
                       **kwargs)


@dataclass(frozen=True)
class LabResults:
    """The results column's components, one per `distribution_tab.OUTPUTS` name (the run handler's updates)."""

    status: gr.HTML
    shown: gr.Radio
    figure: gr.Image
    figure_paths: gr.State  # result's name -> its figure's file, for "Show result"
    note: gr.Markdown
    numbers: gr.Dataframe
    precision: gr.LinePlot
    entropy: gr.LinePlot
    tv: gr.LinePlot
    samples: gr.Gallery
    run_id: gr.Textbox

    def outputs(self) -> list[Any]:
        """In `OUTPUTS` order, the order of the run handler's updates."""
        return [getattr(self, name) for name in OUTPUTS]


def not_offered_info(unavailable: dict[str, str]) -> str | None:
    """The lab's mode list's info line where this model cannot run some modes and the list leaves them out."""
    if not unavailable:
        return None
    names = " and ".join(mode_label(name) for name in unavailable)
    return f"{names} not offered: {'; '.join(sorted(set(unavailable.values())))}."


def build_distribution_tab(handlers, default_size: int = 1024) -> Distributions:
    lab = Distributions(handlers)
    gr.Markdown(INTRO + (TOY_INTRO if lab.toy else MODEL_INTRO), elem_id="lab-intro")
    c: dict[str, Any] = {}
    with gr.Row(elem_id="lab"):
        with gr.Column(scale=2, min_width=320):
            preset = FieldDropdown([(name, name) for name in lab.presets], value=None, label="Lab preset",
                                   info="Settings that reproduce a published claim; the note says what you will "
                                   "see, as measured.", visible=bool(lab.presets), elem_id="lab-preset")
            preset_note = gr.Markdown("", elem_id="lab-preset-note")
            c["prompt"] = FieldTextbox(label="Lab prompt", value="blue square" if lab.toy else "a photo of a cat",
                                       lines=1, info=CONTROL_INFO["prompt"])
            c["prompt_2"] = FieldTextbox(label="Lab prompt 2", value="", lines=1,
                                         info=CONTROL_INFO["prompt_2"])
            lo = TOY_MIN_SEEDS if lab.toy else 1
            c["n_seeds"] = _slider("lab_seeds", min(512, lab.max_seeds) if lab.toy else 16, lo, lab.max_seeds,
                                   step=1, info=f"From {lo} to {lab.max_seeds}: the same seeds (0, 1, ...) run at "
                                   "every scale.", elem_id="lab-seeds")
            c["scales"] = FieldTextbox(label="Lab scales", value="1, 3, 7.5" if lab.toy else "1, 5",
                                       info=f"Comma-separated guidance scales, at most {MAX_SCALES}; 1 is no "
                                       "guidance (conditional only).")
            with gr.Row():
                # The Explore page's labels for the same choices (the modes table's, the schedulers'), not ids.
                # modes this model cannot run (PAG and SEG in the toy world) are not offered, and the line says why
                unavailable = unavailable_modes(handlers.pipe)
                c["mode"] = FieldDropdown([(label, name) for label, name in MODE_CHOICES if name not in unavailable],
                                          value="cfg", label="Lab guidance mode", info=not_offered_info(unavailable))
                c["scheduler"] = FieldDropdown(SCHEDULER_CHOICES, value="euler", label="Lab scheduler")
            with gr.Row():
                c["eta"] = _slider("lab_eta", 0.0, step=0.05, info="DDIM's noise: 0 deterministic, 1 like DDPM.")
                c["steps"] = _slider("lab_steps", 20, step=1)
            size = TOY_SIZE if lab.toy else default_size
            c["size"] = _slider("lab_size", size, step=8, info="Width and height of each sample, in pixels.")
            if lab.toy:
                c["adherence"] = _slider("lab_adherence", 0.5, step=0.05, info=(
                    "How well the toy model learned prompts: it follows the prompt with this probability and "
                    "ignores it otherwise. 1 is the data's own conditional; real models sit below 1 too."))
                c["exact_start"] = FieldCheckbox(False, label="Exact start", info=(
                    "Start from the exact noisy data distribution instead of N(0, σ_max²): SDXL's schedule "
                    "leaves a little signal at its first step, which biases even s = 1 (Lin et al. 2023)."))
            with gr.Accordion("Other axis (one curve per value)", open=False):
                c["axis"] = FieldDropdown([("none", NO_AXIS)] + [(AXIS_LABELS[a], a) for a in AXES
                                          if lab.toy or a != "prompt_adherence"], value=NO_AXIS, label="Other axis")
                c["axis_values"] = FieldTextbox(label="Other axis values", value="",
                                                info="Pick an axis above to vary it.")
            with gr.Row(elem_id="lab-buttons"):
                run_btn = gr.Button("Run lab", variant="primary")
                stop_btn = gr.Button("Stop lab", variant="stop")
        with gr.Column(scale=3, min_width=320):
            out = _results(lab)
    c["axis"].input(lab.describe_axis, inputs=c["axis"], outputs=c["axis_values"], api_name="describe_lab_axis")
    inputs = [c[name] for name in lab.inputs()]
    preset.input(lab.load_preset, inputs=preset, outputs=[*inputs, preset_note], api_name="load_lab_preset")
    run_btn.click(_wrapped(lab), inputs=inputs, outputs=out.outputs(), api_name="run_lab", concurrency_id="gpu")
    stop_btn.click(lab.stop, inputs=out.run_id, api_name="stop_lab", queue=False)
    out.shown.input(lab.show, inputs=[out.shown, out.figure_paths], outputs=out.figure, api_name="show_lab_result",
                    queue=False)
    return lab


def _results(lab: Distributions) -> LabResults:
    out: dict[str, Any] = {}
    out["status"] = gr.HTML(progress_html(0, 1, "Press <b>Run lab</b>."), label="Lab status", elem_id="lab-status")
    # One figure at a time, full width, and a chooser to flip between scales: the same layout at every scale
    # makes the change from one to the next jump out (a gallery's preview shrank it to a third of the column).
    out["shown"] = FieldRadio([], label="Show result", elem_id="lab-shown",
                              info="Flip between the finished scales; the newest is shown as it arrives.")
    out["figure"] = gr.Image(label="Marginals and the 96 items" if lab.toy else "Samples (mosaic)",
                             type="filepath", format="png", interactive=False, buttons=["download", "fullscreen"],
                             show_label=False, elem_id="lab-figure")  # its own title says which; a label would cover it
    out["figure_paths"] = gr.State({})
    out["note"] = gr.Markdown("" if lab.toy else NO_TARGET, elem_id="lab-note")
    out["numbers"] = gr.Dataframe(label="Lab numbers" if lab.toy else "Lab numbers (proxies)", interactive=False,
                                  elem_id="lab-numbers")
    plot = dict(x="scale", y="value", color="series", sort="x", x_title="guidance scale s")
    if lab.toy:
        titles = (("precision", "Precision vs scale", "share matching the prompt"),
                  ("entropy", "Entropy vs scale", "entropy (nats)"),
                  ("tv", "Distance to target vs scale", "total variation"))
    else:
        titles = tuple((slot, f"{column} vs scale", column.removeprefix("proxy: "))
                       for slot, column in zip(("precision", "entropy", "tv"), draw.PROXY_COLUMNS.values()))
    with gr.Row():
        for slot, label, y_title in titles:
            out[slot] = gr.LinePlot(label=label, y_title=y_title, elem_id=f"lab-{slot}", min_width=300, **plot)
    for slot in ("precision", "entropy", "tv"):
        out.setdefault(slot, gr.LinePlot(visible=False, **plot))
    out["samples"] = ServedGallery(label="Samples per scale (first 64 seeds)", columns=3, format="jpeg",
                                   object_fit="contain", height="auto", visible=lab.toy, elem_id="lab-samples")
    out["run_id"] = gr.Textbox(label="Lab run id", visible=False)
    return LabResults(**out)
