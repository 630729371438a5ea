"""The app on the toy world: `--model toy`, the fallback when a model can't be loaded, the banner, presets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import app
from pipeline import GenerationRequest, generate
from pipeline.models import is_toy
from pipeline.models.toy import WORDS, caption_words, nearest_items
from pipeline.presets import load_presets
from ui import render

TOY_BANNER = "toy world: an exact denoiser over 96 drawn shapes; SDXL's weights are not loaded"


def test_model_toy_starts_on_the_toy_world():
    pipe, preview, name, reason = app.load_models(app.parse_args(["--model", "toy", "--device", "cpu"]))
    assert is_toy(pipe) and name == "toy" and reason is None
    assert preview.decode(pipe.unet.items(4, 4).float().view(-1, 4, 4, 4)[:1])[0].shape == (1, 3, 32, 32)
    assert TOY_BANNER in render.banner(name, reason)


def test_a_model_that_cannot_be_loaded_falls_back_to_the_toy_world(tmp_path):
    missing = str(tmp_path / "no-such-model")
    pipe, _, name, reason = app.load_models(app.parse_args(["--model", missing, "--device", "cpu"]))
    assert is_toy(pipe) and name == "toy"
    assert missing in reason
    text = render.banner(name, reason)
    assert TOY_BANNER in text and missing in text


ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers", "gradio")


def test_help_imports_nothing_heavy_and_prints_no_warning():
    """Issue 18: `python app.py --help` took 4.4 s (it imported torch, diffusers and transformers for one default
    value) and printed transformers' torchvision warnings first. It must parse its flags before any heavy import."""
    probe = ("import runpy, sys\nsys.argv = ['app.py', '--help']\n"
             "try:\n    runpy.run_path('app.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONWARNINGS": "default"})
    assert "usage: app.py" in done.stdout and "--model" in done.stdout
    assert done.stderr.strip() == "[]", done.stderr  # no heavy module, and nothing else on stderr


def test_start_up_log_gives_the_reason_and_no_torchvision_noise():
    """Issue 18: the fallback's log line pointed to "the stacktrace above", which no log shows, and every start
    printed two torchvision warnings from imports inside diffusers. The log must say why SDXL did not load."""
    probe = ("import logging, app\nlogging.basicConfig(level=logging.INFO)\n"
             "app.load_models(app.parse_args(['--model', 'nobody/not-a-model', '--device', 'cpu']))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "Starting the toy world instead" in done.stderr
    assert "offline mode is enabled" in done.stderr  # the reason itself
    assert "stacktrace" not in done.stderr and "torchvision" not in done.stderr, done.stderr


def test_model_tiny_stays_for_tests():
    pipe, _, name, reason = app.load_models(app.parse_args(["--model", "tiny", "--device", "cpu"]))
    assert not is_toy(pipe) and name == "tiny" and reason is None
    assert "tiny random demo model" in render.banner(name, reason)


def test_the_words_line_lists_every_word():
    line = render.toy_words()
    assert all(word in line for word in WORDS)


@pytest.mark.parametrize("preset", load_presets(), ids=lambda p: p.path.stem)
def test_every_preset_has_a_toy_version_at_the_toys_size_in_its_words(toy_pipe, preset):
    request, description = preset.for_model(toy=True)
    sdxl, _ = preset.for_model(toy=False)
    assert (request.width, request.height) == (256, 256) and (sdxl.width, sdxl.height) == (1024, 1024)
    assert caption_words(request.prompt), f"{preset.name}: no word of the toy world in {request.prompt!r}"
    # The experiment is the same: only the texts and the size change, and the toy may add seeds (a run costs it
    # milliseconds) and set its model's adherence (a knob SDXL does not have).
    texts = ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "width", "height", "seeds",
             "prompt_adherence")
    assert {k: v for k, v in request.to_dict().items() if k not in texts} == {
        k: v for k, v in sdxl.to_dict().items() if k not in texts
    }
    assert description.strip()


def test_toy_presets_teach_their_point(toy_pipe):
    presets = {p.path.stem: p.for_model(toy=True)[0] for p in load_presets()}

    def landed(request: GenerationRequest, seeds=(1, 2, 3, 4)):
        small = GenerationRequest.from_dict({**request.to_dict(), "width": 128, "height": 128, "steps": 20,
                                             "seeds": list(seeds)})
        return nearest_items(toy_pipe, list(generate(toy_pipe, small))[-1].latents)

    assert all(i.colour == "red" and i.shape == "circle" for i in landed(presets["01-standard-cfg"]))
    assert not any(i.colour == "red" for i in landed(presets["02-reversed-guidance"]))
    assert all(i.shape == "circle" and i.colour != "blue" for i in landed(presets["03-negative-direction"]))
    assert all(i.shape == "circle" and i.colour == "yellow" for i in landed(presets["04-two-text-encoders"]))
