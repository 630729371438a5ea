"""The Word maps tab: which words drive which pixels, for one seed of the Explore tab's settings (issue 22).

Two tools, both in `pipeline`: cross-attention maps per word (`pipeline.attention`, DAAM), recorded during a run
of the one seed, with a step slider that shows each step's maps; and word ablation (`pipeline.attribution`),
the change in x̂₀ when one word is dropped, at one step. The toy world has no attention layers, so there the
tab offers ablation alone and says why. Errors go through `fields.gr_error`, naming this tab's controls.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr
import torch
from PIL import Image
from torch import Tensor

from pipeline import RequestError, generate
from pipeline.attention import AttentionRecorder, Watch, cross_attention_layers, positions, word_map, words
from pipeline.attribution import word_ablation
from pipeline.models import is_toy
from pipeline.previews import make_preview_decoder
from pipeline.request import STEPS_RANGE

from . import words_render as render
from .controls import CONTROL_NAMES, label_of, read, request_from_settings
from .fields import FieldNumber, FieldSlider, gr_error, refused
from .handlers import gpu, gpu_seconds, takes_controls
from .render import mode_label
from .served import ServedGallery


@dataclass(frozen=True)
class Recorded:
    """One seed's recorded maps, per word (W, h, w), for the step slider to show without running again."""

    seed: int
    total_steps: int
    words: tuple  # pipeline.attention.Word, in prompt order
    layers: int
    maps: Tensor  # (W, h, w): summed over layers and steps
    step_maps: dict[int, Tensor]  # 1-based step -> (W, h, w), summed over layers
    final: Image.Image
    x0: dict[int, Tensor]  # 1-based step -> (1, 4, h, w): the step's x̂₀, the image its maps are shown over


class WordMaps:
    """The tab's behaviour; one instance serves every session."""

    def __init__(self, handlers) -> None:
        self.pipe = handlers.pipe
        self.toy = is_toy(self.pipe)
        self.preview = make_preview_decoder("linear", self.pipe, max_size=2048)

    @staticmethod
    def request(values: tuple, seed: Any):
        """The Explore tab's settings, for the one seed asked for."""
        try:
            base = request_from_settings(dict(zip(CONTROL_NAMES, values)))
        except RequestError as exc:
            raise refused(f"Explore settings: {label_of(exc.field)}: {exc.detail}") from exc
        try:
            return dataclasses.replace(base, seeds=(read("word_seed", seed),), decompose_seed=None)
        except ValueError as exc:
            raise gr_error(exc) from exc

    def map_words(self, *values: Any, word_seed: float | None = None) -> tuple:
        """Record the seed's maps. Outputs: status, gallery, mixed note, token table, step slider, state."""
        request = self.request(values, word_seed)
        if self.toy:
            raise refused("Map words: the toy world's denoiser has no attention layers, so it has no maps; "
                          "use Ablate words instead")
        return self._map(request)

    @gpu(duration=lambda self, request: gpu_seconds(2 * request.steps, request.width, request.height))
    def _map(self, request) -> tuple:
        start, seed = time.perf_counter(), request.seeds[0]
        recorder, x0 = AttentionRecorder((Watch(seed),)), {}
        try:
            for event in generate(self.pipe, request, watchers=[recorder]):
                x0[event.step] = event.pred_x0[:1].float().cpu()
        except Exception as exc:
            raise gr_error(exc) from exc
        recorded = self._recorded(request, recorder, x0, event.images[0])
        found = [p for p in positions(self.pipe, request.prompt, request.prompt_2)]
        differs = any(w.mixed for w in recorded.words) or any(p.token != p.token_2 for p in found)
        status = render.maps_status(seed, len(recorded.step_maps), recorded.layers, len(recorded.words),
                                    time.perf_counter() - start)
        slider = gr.update(maximum=recorded.total_steps, value=0, visible=True)
        return (status, self.gallery(recorded, 0), gr.update(value=render.MIXED_NOTE, visible=differs),
                render.token_table(found, differs), slider, recorded)

    def _recorded(self, request, recorder: AttentionRecorder, x0: dict, final: Image.Image) -> Recorded:
        maps = recorder.maps[Watch(request.seeds[0])]
        found = tuple(words(self.pipe, request.prompt, request.prompt_2))
        if not found:
            raise refused("has no words to map", label=label_of("prompt"))
        if maps.total is None:  # e.g. the baseline-only mode: no step ran the prompt
            raise refused(f"no step of a run in {mode_label(request.mode)} mode predicts from the prompt, so "
                          "nothing attends to its words", label=label_of("mode"))

        def per_word(m: Tensor) -> Tensor:
            return torch.stack([word_map(m, w) for w in found]).cpu()

        return Recorded(request.seeds[0], request.steps, found, cross_attention_layers(self.pipe.unet),
                        per_word(maps.total), {s: per_word(m) for s, m in maps.steps.items()}, final, x0)

    def gallery(self, recorded: Recorded, step: int) -> list[tuple[Image.Image, str]]:
        """Each word's map over the final image (step 0: summed over steps) or over the step's x̂₀."""
        if step == 0:
            maps, base, per_pixel = recorded.maps, recorded.final, recorded.layers * len(recorded.step_maps)
        elif step in recorded.step_maps:
            base = render.to_image_size(self.preview(recorded.x0[step])[0], recorded.final)
            maps, per_pixel = recorded.step_maps[step], recorded.layers
        else:  # a step that computed no prediction of the prompt (e.g. a zero-init step)
            return []
        shares = render.share_of_attention(maps, per_pixel)
        return [(render.overlay(base, m), render.map_caption(w, float(s)))
                for w, m, s in zip(recorded.words, maps, shares)]

    def show_step(self, recorded: Recorded | None, step: float) -> tuple:
        """The slider moved: that step's maps from the recorded state. Outputs: gallery, slider's note."""
        try:
            step = read("word_map_step", step)
        except ValueError as exc:
            raise gr_error(exc) from exc
        if recorded is None:
            return [], render.MAP_PROMPT
        if step > recorded.total_steps:
            raise refused(f"must be from 0 to {recorded.total_steps} (the run's steps), got {step}",
                          label=label_of("word_map_step"))
        return self.gallery(recorded, step), f"Showing: {render.step_label(step, recorded.total_steps)}."

    def ablate(self, *values: Any, word_seed: float | None = None, ablation_step: float | None = None) -> tuple:
        """Word ablation at the step. Outputs: gallery, status."""
        request = self.request(values, word_seed)
        try:
            step = read("ablation_step", ablation_step)
        except ValueError as exc:
            raise gr_error(exc) from exc
        return self._ablate(request, step)

    @gpu(duration=lambda self, request, step: gpu_seconds(2 * step + 8, request.width, request.height))
    def _ablate(self, request, step: int) -> tuple:
        start = time.perf_counter()
        try:
            ablation = word_ablation(self.pipe, request, step)
        except Exception as exc:
            raise gr_error(exc, {"step": label_of("ablation_step"), "seed": label_of("word_seed")}) from exc
        full, gallery = self.preview(ablation.x0)[0], []
        heat = ablation.heat()
        for dropped, image, h, delta in zip(ablation.dropped, self.preview(ablation.dropped_x0), heat,
                                            ablation.delta):
            without, changed = render.ablation_caption(dropped, render.rms(delta))
            # one row per word: the whole prompt's x̂₀, x̂₀ without the word, and where they differ
            gallery += [(full, f"whole prompt · step {step}"), (image, without), (render.overlay(full, h), changed)]
        status = render.ablation_status(step, request.steps, ablation.seed, len(ablation.dropped),
                                        time.perf_counter() - start)
        return gallery, status


def build_words_tab(handlers, controls: list) -> None:
    """The tab's components and events (pure layout and wiring)."""
    tab = WordMaps(handlers)
    gr.Markdown(render.INTRO, elem_id="words-intro")
    if tab.toy:
        gr.Markdown(render.TOY_NOTE, elem_id="words-toy-note")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            seed = FieldNumber(value=1, precision=0, label=label_of("word_seed"), elem_id="word-seed",
                               info="One seed; everything else comes from the Explore tab.")
            map_btn = gr.Button("Map words", variant="primary", visible=not tab.toy, elem_id="map-words")
            step = FieldSlider(0, STEPS_RANGE[1], value=0, step=1, label=label_of("word_map_step"), visible=False,
                               elem_id="word-map-step",
                               info="0: summed over all steps, over the final image; 1 to N: that step's own maps, "
                               "over its x̂₀.")
            shown = gr.Markdown(elem_id="word-map-shown")
            ablation_step = FieldSlider(1, STEPS_RANGE[1], value=1, step=1, label=label_of("ablation_step"),
                                        elem_id="ablation-step",
                                        info="Early steps show a word's region; late ones little, as x_t already "
                                        "decides the image.")
            ablate_btn = gr.Button("Ablate words", elem_id="ablate-words")
            status = gr.Markdown(render.ABLATE_PROMPT if tab.toy else render.MAP_PROMPT, elem_id="words-status")
        with gr.Column(scale=3, min_width=300):
            mixed = gr.Markdown(render.MIXED_NOTE, visible=False, elem_id="words-mixed")
            maps = ServedGallery(label="Word maps", columns=4, format="jpeg", object_fit="contain", height="auto",
                                 visible=not tab.toy, elem_id="word-maps")
            with gr.Accordion("Token positions: both encoders' tokens", open=False, visible=not tab.toy,
                              elem_id="word-tokens-group"):
                tokens = gr.Markdown(elem_id="word-tokens")
            ablation = ServedGallery(label="Word ablation: x̂₀ without each word, and where it changed", columns=3,
                                     format="jpeg", object_fit="contain", height="auto", elem_id="word-ablation")
    recorded = gr.State(None)
    if not tab.toy:  # the toy has no maps: no endpoint for them either
        map_btn.click(takes_controls(tab.map_words), inputs=list(controls) + [seed],
                      outputs=[status, maps, mixed, tokens, step, recorded], api_name="map_words",
                      concurrency_id="gpu")
        step.input(tab.show_step, inputs=[recorded, step], outputs=[maps, shown], api_name="word_map_step",
                   trigger_mode="always_last", show_progress="hidden")  # input: the arrow keys move it too
    ablate_btn.click(takes_controls(tab.ablate), inputs=list(controls) + [seed, ablation_step],
                     outputs=[ablation, status], api_name="ablate_words", concurrency_id="gpu")
