"""The page: a header and the four tabs (each built by its own module), and the page-wide style."""

from __future__ import annotations

import gradio as gr

from .controls import CONTROL_NAMES
from .distribution_page import build_distribution_tab
from .explore_tab import Explore, build_explore_tab, wire_explore
from .fields import NamedErrorBlocks
from .handlers import Handlers
from .invert_tab import build_invert_tab
from .sweep_tab import build_sweep_tab

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
}
#run-buttons { flex-wrap: nowrap; }
#status { min-height: 1.6em; }
#presets button { margin: 0; }
#decomposition .caption-label, #images .caption-label { white-space: nowrap; }
/* Thumbnails sized by the column, not by how many images there are: two seeds stay within the gallery's height. */
#images .grid-container { grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); }
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
/* Distribution tab: the samples gallery as tall as its mosaics (Gradio fixes an auto-height gallery at >= 450 px). */
#lab-samples .grid-wrap { min-height: 0 !important; max-height: none !important; }
#title h2 { margin: 0 0 4px 0; }
#title p { margin: 0; }
"""


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
                c, out = build_explore_tab(explore, default_size)
            with gr.Tab("X/Y sweep", id="sweep"):
                build_sweep_tab(handlers, [c[name] for name in CONTROL_NAMES])
            with gr.Tab("Invert", id="invert"):
                build_invert_tab(handlers, {**c, **out, "tabs": tabs}, start_latents, explore)
            with gr.Tab("Distribution", id="distribution"):
                build_distribution_tab(handlers, default_size)
        wire_explore(demo, explore, c, out, start_latents)
    return demo


