"""The X/Y sweep tab (placeholder: being built)."""

import gradio as gr


def build_sweep_tab(handlers, controls: list) -> None:
    gr.Markdown("X/Y sweeps: coming in this change.")
