"""The DDIM inversion tab (placeholder: being built)."""

import gradio as gr


def build_invert_tab(handlers, targets: dict, start_latents: gr.State) -> None:
    gr.Markdown("DDIM inversion: coming in this change.")
