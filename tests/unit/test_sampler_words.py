"""One way of saying it, the true one, everywhere: deterministic is not mode-seeking.

Eta 0 (and Euler) is deterministic: the starting noise alone decides the image. Eta 1 adds fresh noise each step.
Both sample the model's distribution and neither finds its most likely image; guidance is what is mode-seeking.
The page, the presets and the README once called eta 0 "deterministic (mode-seeking)" while a preset said that
neither sampler picks the most likely image.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ui import render

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [ROOT / "README.md", *sorted((ROOT / "presets").glob("*.toml")), *sorted((ROOT / "ui").glob("*.py"))]


def sentences(path: Path) -> list[str]:
    text = re.sub(r"\\\n|\"\s*\n\s*\"", " ", path.read_text(encoding="utf-8"))  # join wrapped lines and strings
    text = re.sub(r"\s+", " ", text)
    return re.split(r"(?<=[.;!?])\s", text)


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: p.name)
def test_only_guidance_is_called_mode_seeking(path):
    for sentence in sentences(path):
        if "mode-seeking" in sentence.lower():
            assert re.search(r"not mode-seeking|guidance is what is mode-seeking", sentence, re.I), sentence


def test_the_eta_hint_says_what_deterministic_means():
    assert "deterministic: the starting noise alone decides the image" in render.ETA_INFO
    assert "Neither seeks the most likely image; guidance does" in render.ETA_INFO


def test_the_eta_control_shows_the_hint(tiny_pipe):
    import gradio as gr

    from pipeline.presets import load_presets
    from ui import Handlers, build_demo

    demo = build_demo(Handlers(tiny_pipe, model_name="tiny", presets=load_presets()), banner="", default_size=64)
    eta = next(b for b in demo.blocks.values() if isinstance(b, gr.Slider) and b.label == "Eta")
    assert eta.info == render.ETA_INFO
