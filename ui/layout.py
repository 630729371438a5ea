"""The page: a header and the five tabs (each built by its own module), and the page-wide style."""

from __future__ import annotations

import gradio as gr

from .distribution_page import build_distribution_tab
from .explore import Explore, build_explore_tab, wire_explore
from .fields import NamedErrorBlocks
from .handlers import Handlers
from .invert_tab import build_invert_tab
from .sweep_tab import build_sweep_tab
from .words_tab import build_words_tab

CACHE_LIFETIME = (600, 3600)  # every 10 min, delete streamed frames older than 1 h: each frame is a file
# Page-wide style, injected into <head> (Gradio 6 takes `css` only in launch(), which the app and each test call).
# On a desktop the results column stays in view (sticky) while the controls column scrolls under it; below
# 1024 px the columns stack and the page scrolls as one.
CSS = """
#explore { align-items: flex-start; }
@media (min-width: 1024px) {
  /* Gradio's container hides overflow, which makes it the sticky column's scroll box and so disables
     stickiness; clip (horizontally only) does not. */
  .gradio-container { overflow: visible !important; overflow-x: clip !important; }
  /* nowrap: Gradio's columns wrap, and a wrapping column capped at the window's height lays what does not fit
     out as a second column to its right, off screen, instead of scrolling to it. */
  /* The column can stick only while the row holding it lasts, and below the row come ~90 px of page (Gradio's
     footer): a column as tall as the window would be pushed up by that much at the bottom of the page. */
  #results { position: sticky; top: 0; align-self: flex-start; max-height: calc(100vh - 100px); overflow-y: auto;
             flex-wrap: nowrap; }
  #results > * { flex-shrink: 0; }  /* scroll within the column rather than squeeze the plot to nothing */
  #results { row-gap: 8px; }  /* half Gradio's gap: the guidance plot fits under the images in a 900 px window */
}
#run-buttons { flex-wrap: nowrap; }
#status { min-height: 1.6em; }
#presets button { margin: 0; }
#decomposition .caption-label, #images .caption-label { white-space: nowrap; }
/* Thumbnails sized by the column, not by how many images there are, and the gallery as tall as its rows: 8 seeds
   show both rows, and with 1-5 seeds the guidance plot below stays within a 1440x900 window. */
#images .grid-container { grid-template-columns: repeat(auto-fill, minmax(128px, 1fr)); }
#images .fixed-height, #images .grid-wrap, #sweep-cells .fixed-height, #sweep-cells .grid-wrap {
  height: auto !important; min-height: 0 !important; max-height: none !important; }
/* Empty notes take no room (each would still cost the column's gap). */
#start-note:has(span.md:empty), #fork-note:has(span.md:empty), #norm-note:has(span.md:empty),
#preset-note:has(span.md:empty), #changed-note:has(span.md:empty) { display: none; }
#decomposition .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)); }
/* What-if: each seed's x̂₀ beside its difference image, two seeds to a row (one on a phone). */
#whatif .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)); }
@media (max-width: 640px) {
  #images .grid-container, #decomposition .grid-container { grid-template-columns: repeat(auto-fill, minmax(130px, 1fr)); }
  #whatif .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)); }
}
/* The final PNGs are for downloading: a plain box, not the dashed drop zone of an upload. */
#downloads, #downloads * { border-style: solid !important; }
#downloads .wrap { min-height: 0; }
/* Word maps tab: its galleries as tall as their rows, and whole captions ("red / lue · 4.0% of attention"). */
#word-maps .fixed-height, #word-maps .grid-wrap, #word-ablation .fixed-height, #word-ablation .grid-wrap {
  height: auto !important; min-height: 0 !important; max-height: none !important; }
#word-maps .caption-label, #word-ablation .caption-label { white-space: normal; overflow: visible;
  text-overflow: clip; max-width: calc(100% - 8px); }
/* Distribution tab: the samples gallery as tall as its mosaics (Gradio fixes an auto-height gallery at >= 450 px). */
#lab-samples .grid-wrap { min-height: 0 !important; max-height: none !important; }
#title h2 { margin: 0 0 4px 0; }
#title p { margin: 0; }
/* Sweep cells: the whole caption ("Guidance scale 7.5 · Guidance mode Conditional only"), wrapped, not "Guidance …". */
#sweep-cells .caption-label { white-space: normal; overflow: visible; text-overflow: clip; max-width: calc(100% - 8px); }
@media (max-width: 640px) {  /* two cells to a row, so a wrapped caption leaves most of its cell in view */
  #sweep-cells .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
}
/* A phone stacks the columns, and Generate sat below every control (2,290 px down). The columns give up their
   boxes, so their blocks can be ordered as one list: the prompt, then Generate with the run's images, then the
   presets and the other controls, then the plot, what-if and files. */
@media (max-width: 767px) {
  #explore { flex-direction: column; flex-wrap: nowrap; }
  #controls, #results { display: contents; }
  #controls > * { order: 3; }
  #results > * { order: 4; }
  #controls > .form:has(#ctl-prompt) { order: 0; }
  #run-buttons, #status, #start-note, #clear-start, #fork-note, #clear-fork, #images, #revisit { order: 1; }
  #presets, #preset-note, #changed-note, #toy-words { order: 2; }
}
"""
# A PNG dropped anywhere on the results column (the gallery, the plot, the status) restores its settings as the
# file box under "Links and saved settings" does: it is handed to that box's file input, whose upload event runs
# the same restore. The group is opened first when closed (Gradio renders a closed group's contents only once it
# has been opened). Other files, and drops elsewhere, are left to the browser and the components.
ACCEPT_DROPPED_PNG = """() => {
    const isPng = (f) => f && (f.type === 'image/png' || f.name.toLowerCase().endsWith('.png'));
    const over = (e) => e.target instanceof Element && e.target.closest('#results');
    const fileInput = () => document.querySelector('#png-in input[type=file]');
    async function handOver(file) {
        if (!fileInput()) document.querySelector('#group-links .label-wrap')?.click();
        for (let i = 0; i < 100 && !fileInput(); i++) await new Promise((r) => setTimeout(r, 50));
        const input = fileInput();
        if (!input) return;
        const files = new DataTransfer();
        files.items.add(file);
        input.files = files.files;
        input.dispatchEvent(new Event('change', {bubbles: true}));
    }
    document.addEventListener('dragover', (e) => {
        if (over(e) && [...(e.dataTransfer?.items || [])].some((i) => i.kind === 'file')) e.preventDefault();
    });
    document.addEventListener('drop', (e) => {
        const file = over(e) && [...(e.dataTransfer?.files || [])].find(isPng);
        if (!file) return;
        e.preventDefault();
        handOver(file);
    });
}"""



def build_demo(handlers: Handlers, banner: str = "", default_size: int = 1024) -> gr.Blocks:
    explore = Explore(handlers, default_size)
    with NamedErrorBlocks(title="CFG Explorer", delete_cache=CACHE_LIFETIME) as demo:
        gr.HTML("", head=f"<style>{CSS}</style>", elem_id="page-style", padding=False)
        gr.Markdown(
            "## CFG Explorer\nWatch classifier-free guidance shape an SDXL image, step by step. "
            "Change one thing at a time and compare seeds side by side.", elem_id="title",
        )
        gr.Markdown(banner, visible=bool(banner), elem_id="model-banner")
        start_latents = gr.State(None)  # starting noise, sent from the Invert tab
        with gr.Tabs() as tabs:
            with gr.Tab("Explore", id="explore"):
                view = build_explore_tab(explore, default_size)
            with gr.Tab("X/Y sweep", id="sweep"):
                build_sweep_tab(handlers, view.control_list())
            with gr.Tab("Invert", id="invert"):
                build_invert_tab(handlers, view, tabs, start_latents, explore)
            with gr.Tab("Distribution", id="distribution"):
                build_distribution_tab(handlers, default_size)
            with gr.Tab("Word maps", id="words"):
                build_words_tab(handlers, view.control_list())
        wire_explore(demo, explore, view, start_latents)
        demo.load(None, js=ACCEPT_DROPPED_PNG, api_visibility="private", queue=False)
    return demo


