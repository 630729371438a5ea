"""The describe room: what the controls mean as they move (the mode's formula and which controls it reads, the
schedule's curve and UNet passes, img2img's start step, the weights' baseline, prompts cut at 77 tokens)."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from pipeline import RequestError
from pipeline.conditioning import truncations
from pipeline.guidance import GUIDANCE_MODES
from pipeline.inversion import fit_size
from pipeline.loop import img2img_start, plan_passes
from pipeline.models.toy import draw
from pipeline.schedulers import SCHEDULER_TABLE, make_scheduler, run_sigmas
from pipeline.schedules import SCHEDULE_TABLE, guidance_scales, in_interval
from pipeline.uploads import load_image

from .. import render
from ..controls import CONTROL_NAMES, read, request_from_settings
from ..fields import gr_error

# Controls whose info line follows the mode; Guidance scale has its own handler, which also reads its value
NOTED = tuple(name for name in render.CONTROL_INFO if name != "guidance_scale")


class DescribeRoom:
    """Notes and plots that follow the controls (a part of `Explore`)."""

    def describe_mode(self, mode: str):
        """The formula, which mode-specific controls to show, and which shared controls the mode ignores."""
        reads = GUIDANCE_MODES[mode].reads if mode in GUIDANCE_MODES else ()
        notes = render.control_notes(mode)
        return (
            render.formula(mode),
            gr.update(visible="negative_prompt" in reads),
            gr.update(visible=mode == "weighted"),
            *(gr.update(visible=mode == other.name) for other in render.MODES_WITH_PARAMS),
            *(gr.update(info=notes[name][0], interactive=notes[name][1]) for name in NOTED),
        )

    def describe_scale(self, mode: str, scale: float | None):
        """Guidance scale's label and info as the mode names it (s, or CFG++'s λ from 0 to 1), and why Generate
        would refuse the value it holds in this mode: switching to CFG++ at 7.5 says so, rather than clamp it."""
        return gr.update(**render.scale_control(mode, scale if isinstance(scale, (int, float)) else None))

    def describe_scale_plot(self, mode: str, scale: float | None):
        """The schedule plot's title as the mode reads its scale (CFG++: the equivalent ω_t for its λ); its data
        stays `describe_schedule`'s, whose API answer is the plot's data alone."""
        return gr.update(label=render.scale_plot_title(mode, scale))

    def describe_guidance_schedule(self, schedule: str):
        """Cutoff shows where the schedule reads it (its registry entry says so: the cutoff schedule's)."""
        entry = SCHEDULE_TABLE.get(schedule)
        return gr.update(visible=entry is not None and "guidance_cutoff" in entry.uses)

    def follow_seed(self, seed: float | None, num_seeds: float | None, decompose_seed: float | None):
        """Keep Decomposition seed among the run's seeds when Seed or Number of seeds moves."""
        try:
            first, count = int(seed), int(num_seeds)
        except (TypeError, ValueError):  # half-typed: leave it until Seed is a number again
            return gr.skip()
        if decompose_seed is not None and first <= decompose_seed < first + count:
            return gr.skip()
        return first

    def describe_scheduler(self, scheduler: str):
        """Eta shows where the scheduler reads it (its registry entry says so: DDIM's)."""
        entry = SCHEDULER_TABLE.get(scheduler)
        return gr.update(visible=entry is not None and "eta" in entry.controls)

    def describe_weights(self, *weights: float) -> str:
        return render.weights_line([float(w or 0.0) for w in weights])

    def describe_schedule(self, *values: Any):
        """The per-step scale curve and how many UNet passes the settings run; updated as the controls move."""
        settings = dict(zip(CONTROL_NAMES, values))
        try:
            r = request_from_settings(settings)
        except RequestError as exc:
            if exc.field != "guidance_scale":  # half-edited controls: keep the last curve until valid
                return gr.skip(), gr.skip()
            # a scale the mode refuses (CFG++ at CFG's 7.5): say so rather than show the old curve as if current
            return gr.skip(), f"⚠️ The curve is the last valid settings': **Guidance scale** {exc.detail}."
        except (ValueError, TypeError, KeyError):  # half-edited controls: keep the last curve until valid
            return gr.skip(), gr.skip()
        scales = guidance_scales(r.guidance_scale, r.steps, r.guidance_schedule, r.guidance_interval, r.guidance_cutoff)
        passes, own = plan_passes(r), GUIDANCE_MODES[r.mode].scale
        if own is None or own.equivalent is None:
            return render.scale_table(scales), render.passes_line(passes, r)
        # the plot's data alone, as for every mode (the API's shape): the line under it says it is ω_t
        omegas = self.equivalent_scales(r, scales, own.equivalent)
        line = f"{render.passes_line(passes, r)} {render.equivalent_line(r, own.symbol, omegas)}"
        return render.scale_table(omegas), line

    def equivalent_scales(self, r, scales: list[float], equivalent) -> list[float]:
        """The CFG scale each step equals (CFG++: w_t = l sigma_t / (sigma_t - sigma_next)) on the run's own
        scheduler and steps; 1 outside the guidance interval, where only the prompt's prediction is taken."""
        sigmas = run_sigmas(make_scheduler(self.pipe, r.scheduler), r.steps)
        return [equivalent(scale, *sigma) if in_interval(i, r.steps, r.guidance_interval) else 1.0
                for i, (scale, sigma) in enumerate(zip(scales, sigmas))]

    def describe_strength(self, image, strength: float, steps: float) -> str:
        if image is None:
            line = "Upload an image to start from it; the Width and Height sliders set the size it is resized to."
        else:
            line = render.strength_line(img2img_start(int(steps), float(strength)), int(steps))
        return f"{line}\n\n{render.TOY_IMG2IMG}" if self.toy else line

    def start_item(self, width: float, height: float) -> Image.Image:
        """The toy world's start image where strength shows: a data item (`render.TOY_START_ITEM`), drawn at the
        page's size. Any other image snaps to the data at every strength; an item stays one, up to a strength."""
        try:
            width, height = read("width", width), read("height", height)
        except RequestError as exc:
            raise gr_error(exc) from exc
        return draw(render.TOY_START_ITEM, width, height)

    def fit_image(self, image):
        """An uploaded start image sets Width and Height to its own size (multiples of 8, at most 1024 px)."""
        if image is None:
            return gr.skip(), gr.skip()
        try:
            width, height = fit_size(load_image(image, "init_image"))
        except RequestError as exc:
            raise gr_error(exc) from exc
        return width, height

    def count_tokens(self, prompt: str, prompt_2: str, negative_prompt: str, negative_prompt_2: str, mode: str) -> str:
        texts = {"prompt": prompt or "", "prompt_2": prompt_2 or ""}
        if mode in GUIDANCE_MODES and "negative_prompt" in GUIDANCE_MODES[mode].reads:
            texts.update(negative_prompt=negative_prompt or "", negative_prompt_2=negative_prompt_2 or "")
        return render.truncation_warning(truncations(self.pipe, **texts))
