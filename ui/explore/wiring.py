"""The Explore tab's events, over its typed view: each names the components it reads and updates."""

from __future__ import annotations

import gradio as gr

from pipeline.request import MAX_WEIGHTED_PROMPTS

from .. import render
from ..whatif import RUNNING, SHOW_RUN, WhatIfPanel
from .describe import NOTED
from .tab import Explore
from .view import ExploreView

SHOW_CHANGED = "() => { document.querySelector('#changed-note')?.scrollIntoView({block: 'nearest'}); }"
COPY_LINK = """async (link) => {
    if (!link) return '';
    try { await navigator.clipboard.writeText(link); return '✓ Copied the link to the clipboard.'; }
    catch (e) { return 'The browser did not allow copying: select the link above and copy it.'; } }"""
# Events that only serve the page (no API endpoint), answered at once.
QUIET = dict(api_visibility="private", queue=False, show_progress="hidden")


def wire_explore(demo: gr.Blocks, explore: Explore, view: ExploreView, start_latents: gr.State) -> None:
    """The Explore tab's events; `view` comes from `build_explore_tab`."""
    checked, generated = _wire_run(explore, view, start_latents)
    _wire_whatif(WhatIfPanel(explore), view, checked, generated)
    _wire_stop(explore, view)
    _wire_revisit(explore, view)
    _wire_descriptions(demo, explore, view)
    _wire_start_image(explore, view, start_latents)
    _wire_settings(demo, explore, view)


def _wire_run(explore: Explore, view: ExploreView, start_latents: gr.State) -> tuple:
    """Generate, checked first. Returns (the passed check's listener, the run event)."""
    run_inputs = view.control_list() + [view.init_image, start_latents, view.fork_path]
    # The page checks the controls first (`check_and_mark`): a refusal is said, and its control marked, in the
    # check's own response, and the last run's images, slider and plot stay as they were; valid controls get a
    # new run token, and the token's change runs them.
    view.generate.click(explore.bound("check_and_mark"), inputs=run_inputs,
                        outputs=[view.status, view.invalid_style, *view.groups.ordered(), view.run_token],
                        api_visibility="private", show_progress="hidden")
    checked = view.run_token.change
    generated = checked(explore.bound("generate"), inputs=run_inputs, outputs=view.run_outputs(),
                        api_name="generate", concurrency_id="gpu", trigger_mode="once")  # as a click's run
    return checked, generated


def _wire_stop(explore: Explore, view: ExploreView) -> None:
    """Stop."""
    # Stop ends the run server-side; the run's own stream then says where it stopped (see RunRoom.stop).
    view.stop.click(explore.stop, inputs=view.run_id, api_name="stop", queue=False)


def _wire_whatif(panel: WhatIfPanel, view: ExploreView, checked, generated) -> None:
    """The what-if panel: cleared once Generate's check passes, refreshed after the run, recombined as its
    sliders or the step slider move, and its forks streamed into Generate's outputs."""
    ui = view.whatif
    checked(lambda: ([], RUNNING), outputs=[ui.gallery, ui.summary], **QUIET)
    generated.then(panel.refresh, inputs=view.history, outputs=ui.refreshed(), **QUIET)
    inputs = [view.history, view.step_slider, ui.scale, ui.mode, view.controls["preview"]]
    # No queue: the recombination is cheap and calls no UNet, so the slider answers as it moves.
    for event, name in ((ui.scale.change, "whatif"), (ui.mode.change, "whatif_mode"),
                        (view.step_slider.input, "whatif_at_step")):  # input: the arrow keys move it too
        event(panel.preview, inputs=inputs, outputs=[ui.gallery, ui.summary], api_name=name, queue=False,
              show_progress="hidden", trigger_mode="always_last")
    # A fork is a run: bring its status and images into view, where runs are watched (the panel sits below them).
    ui.fork.click(None, js=SHOW_RUN, **QUIET)
    forked = ui.fork.click(panel.fork, inputs=[*inputs, view.controls["preview_every"], view.controls["preview_source"]],
                           outputs=view.run_outputs(), api_name="fork", concurrency_id="gpu")
    follow = dict(fn=panel.follow, inputs=inputs, outputs=[ui.gallery, ui.summary], **QUIET)
    forked.then(panel.add_branch, inputs=[view.history, ui.branch_list], outputs=[ui.branch_list, ui.branches],
                **QUIET).then(**follow)
    ui.branches.input(panel.show_branch, inputs=[ui.branch_list, ui.branches],
                      outputs=[view.gallery, view.history, view.downloads, view.step_slider, view.status,
                               view.final_btn], api_name="show_branch", show_progress="hidden").then(**follow)




def _wire_revisit(explore: Explore, view: ExploreView) -> None:
    """The Revisit step slider and the Final images button."""
    revisit = [view.gallery, view.decomposition, view.decomposition_note, view.final_btn]
    view.step_slider.input(explore.show_step, inputs=[view.history, view.step_slider], outputs=revisit,
                           api_name="show_step", trigger_mode="always_last", show_progress="hidden")
    view.final_btn.click(explore.show_final, inputs=view.history,
                         outputs=[view.gallery, view.step_slider, view.decomposition, view.decomposition_note,
                                  view.final_btn], api_name="show_final", show_progress="hidden")


def _wire_descriptions(demo: gr.Blocks, explore: Explore, view: ExploreView) -> None:
    """Notes, plots and visibility that follow the controls as they move."""
    c = view.controls
    c["mode"].change(explore.describe_mode, inputs=c["mode"],
                     outputs=[view.formula, view.negative_group, view.weighted_group,
                              *(view.mode_params[mode.name] for mode in render.MODES_WITH_PARAMS),
                              *(c[name] for name in NOTED)], api_name="describe_mode")
    gr.on([c["mode"].change, c["guidance_scale"].change], explore.describe_scale,
          inputs=[c["mode"], c["guidance_scale"]], outputs=c["guidance_scale"], api_name="describe_scale",
          show_progress="hidden")
    gr.on([c["mode"].change, c["guidance_scale"].change], explore.describe_scale_plot,
          inputs=[c["mode"], c["guidance_scale"]], outputs=view.scale_plot, **QUIET)
    c["guidance_schedule"].change(explore.describe_guidance_schedule, inputs=c["guidance_schedule"],
                                  outputs=c["guidance_cutoff"], api_name="describe_guidance_schedule")
    c["decompose"].change(lambda on: (gr.update(visible=on), gr.update(visible=on)), inputs=c["decompose"],
                          outputs=[view.decomposition, view.decomposition_note], api_name="describe_decomposition")
    gr.on([c["seed"].change, c["num_seeds"].change], explore.follow_seed,
          inputs=[c["seed"], c["num_seeds"], c["decompose_seed"]], outputs=c["decompose_seed"],
          api_name="follow_seed", show_progress="hidden")
    c["scheduler"].change(explore.describe_scheduler, inputs=c["scheduler"], outputs=c["eta"],
                          api_name="describe_scheduler")
    weights = [c[f"weight_{k}"] for k in range(1, MAX_WEIGHTED_PROMPTS + 1)]
    gr.on([weight.change for weight in weights], explore.describe_weights, inputs=weights, outputs=view.weights,
          api_name="describe_weights", show_progress="hidden")
    schedule_inputs = ("mode", "guidance_scale", "steps", "guidance_schedule", "guidance_cutoff", "interval_start",
                       "interval_stop", "strength")
    gr.on(
        [demo.load] + [c[name].change for name in schedule_inputs]
        + [c[param.name].change for mode in render.MODES_WITH_PARAMS for param in mode.params]  # e.g. zero-init steps
        + [view.init_image.change],
        explore.bound("describe_schedule"), inputs=view.control_list(), outputs=[view.scale_plot, view.passes],
        api_name="describe_schedule", show_progress="hidden",
    )
    gr.on([view.init_image.change, c["strength"].change, c["steps"].change], explore.describe_strength,
          inputs=[view.init_image, c["strength"], c["steps"]], outputs=view.strength_info,
          api_name="describe_strength", show_progress="hidden")


def _wire_start_image(explore: Explore, view: ExploreView, start_latents: gr.State) -> None:
    """The start image (img2img): the toy world's data item, an upload's own size, and the inverted noise."""
    c = view.controls
    if view.start_item is not None:
        view.start_item.click(explore.start_item, inputs=[c["width"], c["height"]], outputs=view.init_image,
                              api_name="start_item")
    view.init_image.upload(explore.fit_image, inputs=view.init_image, outputs=[c["width"], c["height"]],
                           api_name="fit_image")
    view.clear_start.click(lambda: (None, "", gr.update(visible=False)),
                           outputs=[start_latents, view.start_note, view.clear_start], api_name="clear_start")
    texts = [c[name] for name in ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "mode")]
    gr.on([text.change for text in texts], explore.count_tokens, inputs=texts, outputs=view.token_warning,
          api_name="count_tokens", show_progress="hidden")


def _wire_settings(demo: gr.Blocks, explore: Explore, view: ExploreView) -> None:
    """Presets, links and PNGs: first note the controls as they are, to say afterwards what changed."""
    controls, groups = view.control_list(), view.groups.ordered()
    view.presets.click(explore.snapshot, inputs=controls, outputs=view.before, **QUIET).then(
        explore.load_preset, inputs=[view.presets, view.before],
        outputs=[*controls, view.preset_note, view.changed, *groups], api_name="load_preset")
    view.link_btn.click(explore.bound("share_link"), inputs=controls, outputs=view.link, api_name="share_link").then(
        None, inputs=view.link, outputs=view.link_note, js=COPY_LINK)
    fork_outputs = [view.fork_path, view.fork_note, view.clear_fork]
    restored = view.png_in.upload(explore.snapshot, inputs=controls, outputs=view.before, **QUIET).then(
        explore.restore_from_png, inputs=[view.png_in, view.before], outputs=[*controls, view.changed, *groups],
        api_name="restore_from_png")
    restored.success(explore.fork_path_of_png, inputs=view.png_in, outputs=fork_outputs, **QUIET)
    # The PNG may have been dropped at the bottom of the controls or on the results: show what it changed.
    restored.success(None, js=SHOW_CHANGED, **QUIET)
    # A preset, or the button, leaves the restored fork path behind: Generate then runs the controls alone.
    for event in (view.presets.click, view.clear_fork.click):
        event(lambda: (None, "", gr.update(visible=False)), outputs=fork_outputs, **QUIET)
    demo.load(explore.restore_from_query, outputs=controls, api_name="restore_from_url")
