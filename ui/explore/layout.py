"""The Explore tab's layout: two columns, the controls (most-used first, the rest in collapsed groups) and the
results. Pure layout: the events are `wiring`'s, the behaviour the rooms'."""

from __future__ import annotations

import gradio as gr

from pipeline.loop import unavailable_modes
from pipeline.models import is_toy
from pipeline.request import MAX_WEIGHTED_PROMPTS, SIZE_MULTIPLE

from .. import guidance_plot, render
from ..controls import CONTROL_NAMES, CONTROLS, MAX_LINK_CHARS
from ..fields import (FieldCheckbox, FieldDropdown, FieldFile, FieldImage, FieldNumber, FieldRadio, FieldSlider,
                      FieldTextbox)
from ..served import ServedGallery
from ..whatif import build_whatif
from .defaults import GROUP_TITLES, PAGE_DEFAULTS, PNG_LABEL, REQUEST_DEFAULTS, page_defaults
from .tab import Explore
from .view import ExploreView, Groups


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


def build_explore_tab(explore: Explore, default_size: int) -> ExploreView:
    """The Explore tab's components (built in local dicts here, the layout's own business, and returned typed).

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
            unavailable = unavailable_modes(explore.pipe)  # PAG and SEG in the toy world: greyed, with why
            c["mode"] = _control(FieldRadio, "mode", info=render.unavailable_info(unavailable))
            if unavailable:
                gr.HTML("", head=f"<style>{render.unavailable_css(unavailable)}</style>", padding=False,
                        elem_id="unavailable-modes-style")
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
                    for param in mode.params:  # a tuple Param: a text field "10, 5" (controls.NUMBERS)
                        c[param.name] = (_control(FieldTextbox, param.name, info=param.info) if param.length else
                                         _control(FieldSlider, param.name, param.default, step=param.step,
                                                  info=param.info))
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
                out["scale_plot"] = gr.LinePlot(x="step", y="guidance scale", label=render.SCALE_PLOT,
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
            out["whatif"] = build_whatif()  # below the plot: the plot stays within a 900 px window
            out["downloads"] = gr.File(label="Final PNGs, settings embedded (restore them under Links and saved settings)",
                                       file_count="multiple", interactive=False, elem_id="downloads", height=110)
    out["invalid_style"] = gr.HTML("", elem_id="invalid-style", padding=False,  # marks the control it names
                                   js_on_load=KEEP_TYPED_VALUES)
    out["history"] = gr.State(None)
    out["fork_path"] = gr.State(None)  # a restored fork PNG's path (GenerationRequest.forks), replayed by Generate
    out["before"] = gr.State(None)  # the controls just before a preset, PNG or link replaced them
    # The running job's id, from the first update of its stream: Stop sends it back (see handlers.Jobs).
    out["run_id"] = gr.Textbox(label="Run id", visible=False)
    out["run_token"] = gr.Textbox(label="Run token", visible=False)  # see `RunRoom.check_and_mark`
    return _view(c, out)


def _view(c: dict, out: dict) -> ExploreView:
    """The typed view of what `build_explore_tab` built."""
    groups = Groups(**{key: out.pop(f"group_{key}") for key in GROUP_TITLES})
    mode_params = {mode.name: out.pop(f"{mode.name}_params") for mode in render.MODES_WITH_PARAMS}
    controls = {name: c[name] for name in CONTROL_NAMES}
    return ExploreView(controls=controls, mode_params=mode_params, groups=groups, init_image=c["init_image"],
                       start_item=out.pop("start_item", None), **out)


# Gradio's slider clamps a typed value into its range when its number box loses focus (Math.min/max in its
# blur handler), so Steps 0 became 1 and the next Generate ran with a value nobody chose. The app checks every
# value itself and names the control (`ui.fields`): this keeps what was typed, by stopping the slider's blur
# handler from seeing the event (a listener on `window` in the capture phase runs before the input's own).
KEEP_TYPED_VALUES = """if (!window.cfgKeepTypedValues) { window.cfgKeepTypedValues = true;
    window.addEventListener('blur', (e) => { const t = e.target;
        if (t instanceof HTMLInputElement && t.type === 'number' && t.closest('.block')?.querySelector('input[type=range]'))
            e.stopImmediatePropagation(); }, true); }"""
