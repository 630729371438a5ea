"""The DDIM inversion tab: recover the noise that DDIM maps back onto an image, measure the round trip, and
send the noise to the Explore tab as its starting latents."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import gradio as gr
import pandas as pd
from PIL import Image

from pipeline import RequestError
from pipeline.inversion import Inversion, error_curve, fit_size, invert, noise_statistics, reconstruct
from pipeline.models import is_toy
from pipeline.previews import make_preview_decoder
from pipeline.uploads import load_image
from pipeline.request import STEPS_RANGE

from . import render
from .controls import CONTROL_NAMES, TAB_CONTROLS
from .fields import FieldImage, FieldSlider, FieldTextbox, gr_error, refused
from .handlers import gpu, gpu_seconds
from .served import ServedImage

if TYPE_CHECKING:
    from .explore import Explore, ExploreView

CURVE_STEPS = "5, 10, 25, 50"
UPLOAD_PROMPT = "Upload an image and press **Invert**."
CURVE_PROMPT = "Press **Error curve** to invert and reconstruct at each number of steps."
MAX_CURVE_POINTS = 8  # steps values per curve; each costs an inversion and a reconstruction per scale
STRONG_GUIDANCE = 7.5  # the curve's second scale when the chosen one is not above 1
FIELD_LABELS = {  # library field -> this tab's label
    "image": "Image to invert",
    "width": "Image to invert",
    "height": "Image to invert",
    "prompt": "Inversion prompt",
    "prompt_2": "Inversion prompt",
    "steps": "Inversion steps",
    "guidance_scale": "Inversion guidance scale",
}
# The Explore tab's controls "Use this noise in Explore" sets: what DDIM (eta 0) needs to map the noise back
# onto the image, plus the start note and its button. init_image is cleared: a run takes a start image or
# starting latents, not both.
NOISE_TARGETS = (
    "prompt", "prompt_2", "mode", "uncond", "guidance_scale", "guidance_schedule", "interval_start", "interval_stop",
    "guidance_rescale", "steps", "scheduler", "eta", "num_seeds", "width", "height", "init_image", "start_note",
    "clear_start", "tabs",
)
SCALE_INFO = "1 is no guidance, which inverts best: stronger guidance inverts worse (Mokady et al. 2022)."
SCALE_INFO_TOY = "1 is no guidance. The toy's data images come back at 1 and at 7.5 alike (see the note above)."
WHY_GUIDANCE_BREAKS = (
    "Why strong guidance breaks it in a model that generalises, such as SDXL: each inverse step reuses the noise "
    "prediction at the current latent for the next, noisier one; guidance scales up the prediction's change "
    "between steps (by s, through ε_c − ε_u), so these small errors grow with s and compound over the steps "
    "(Mokady et al. 2022)."
)


def parse_curve_steps(text: str) -> tuple[int, ...]:
    """"5, 10, 25, 50" -> (5, 10, 25, 50); errors name the Curve steps field."""
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    lo, hi = STEPS_RANGE
    if not items:
        raise refused("Curve steps: give at least one number of steps, e.g. 5, 10, 25, 50")
    if len(items) > MAX_CURVE_POINTS:
        raise refused(f"Curve steps: at most {MAX_CURVE_POINTS} values, got {len(items)}")
    try:
        steps = tuple(int(item) for item in items)
    except ValueError:
        raise refused(f"Curve steps: must be whole numbers, got {text!r}") from None
    bad = [n for n in steps if not lo <= n <= hi]
    if bad:
        raise refused(f"Curve steps: each must be from {lo} to {hi}, got {bad[0]}")
    return tuple(sorted(set(steps)))


def curve_scales(guidance_scale: float) -> tuple[float, ...]:
    """No guidance against the chosen scale, or against a typical strong one when the choice guides less."""
    return (1.0, float(guidance_scale)) if guidance_scale > 1 else (1.0, STRONG_GUIDANCE)


def _db(value: float) -> float | None:
    return round(value, 2) if math.isfinite(value) else None  # identical images: no finite PSNR to plot


class Inversions:
    """The Invert tab's behaviour; one instance serves every session (the last inversion is per-session state)."""

    def __init__(self, handlers, target_names: tuple[str, ...] = NOISE_TARGETS, describe_changes=None) -> None:
        self.handlers = handlers
        self.target_names = target_names
        self.describe_changes = describe_changes
        # Shown: x_T through the per-pixel latent->RGB map (one block per latent), the same colours the Linear
        # preview gives. Fresh Gaussian noise looks like even colour speckle; where the image still shows
        # through, the inversion carried structure into x_T instead of noise.
        self.noise_preview = make_preview_decoder("linear", handlers.pipe)

    def _result(self, inversion: Inversion, psnr: float, latent_mse: float) -> str:
        r = inversion.request
        guided = f"guidance {r.guidance_scale:g}" if r.guidance_scale != 1 else "no guidance (scale 1)"
        line = (f"**PSNR {psnr:.2f} dB** · latent MSE {latent_mse:.4g} — {r.width}x{r.height}, "
                f"{r.steps} DDIM steps, {guided}. Higher PSNR and lower MSE mean a closer round trip.")
        if self.handlers.model_name == "tiny":
            line += ("\n\n⚠️ The tiny random model's VAE cannot reproduce images, so PSNR is low whatever the "
                     "steps; the latent MSE still shows how well the inversion itself went.")
        return line

    @staticmethod
    def _image(source) -> Image.Image:
        """The upload, size-checked from its header before decoding, as RGB."""
        if source is None:
            raise refused("Image to invert: upload an image to invert")
        try:
            return load_image(source, "image")
        except RequestError as exc:
            raise gr_error(exc, FIELD_LABELS) from exc

    def invert(self, image, prompt: str, steps: float, guidance_scale: float) -> Iterator[tuple]:
        """Stream (noise image, reconstruction, result text, inversion): invert, then reconstruct from the noise."""
        image = self._image(image)
        width, height = fit_size(image)
        yield None, None, f"**Inverting** {width}x{height} with {int(steps)} DDIM steps...", None
        yield from self._invert(image, prompt or "", int(steps), float(guidance_scale))

    def noise_caption(self, inversion: Inversion | None) -> str:
        """Under "Recovered noise": what it shows and why it can look like the picture (render.recovered_noise_caption)."""
        return "" if inversion is None else render.recovered_noise_caption(*noise_statistics(inversion),
                                                                           is_toy(self.handlers.pipe))

    def clear(self) -> tuple:
        """A new image: the last image's results go, so nothing on the tab describes another image. Outputs: noise,
        reconstruction, result, inversion, noise caption, plot, table, curve status."""
        plot, table = self._tables([], (), ())
        return (None, None, UPLOAD_PROMPT, None, "", plot, table, CURVE_PROMPT)

    # inversion, then reconstruction: two DDIM runs, each of two UNet passes per step when guided
    @gpu(duration=lambda self, image, prompt, steps, scale: gpu_seconds(2 * steps * (1 + (scale != 1)), *fit_size(image)))
    def _invert(self, image, prompt: str, steps: int, guidance_scale: float) -> Iterator[tuple]:
        try:
            inversion = invert(self.handlers.pipe, image, prompt, steps, guidance_scale)
            noise = self.noise_preview(inversion.noise)[0]
            yield noise, None, "**Reconstructing:** DDIM (eta 0) from the recovered noise...", inversion
            result = reconstruct(self.handlers.pipe, image, inversion)
        except ValueError as exc:
            raise gr_error(exc, FIELD_LABELS) from exc
        except Exception as exc:
            raise gr_error(exc) from exc
        yield noise, result.image, self._result(inversion, result.psnr, result.latent_mse), inversion

    def error_curve(self, image, prompt: str, guidance_scale: float, curve_steps: str) -> Iterator[tuple]:
        """Stream (plot, table, status): one row per (scale, steps) as it finishes."""
        image = self._image(image)
        steps = parse_curve_steps(curve_steps)
        scales = curve_scales(float(guidance_scale))
        yield from self._curve(image, prompt or "", steps, scales)

    @gpu(duration=lambda self, image, prompt, steps, scales: gpu_seconds(
        2 * sum(steps) * sum(1 + (s != 1) for s in scales), *fit_size(image)))
    def _curve(self, image, prompt: str, steps: tuple[int, ...], scales: tuple[float, ...]) -> Iterator[tuple]:
        rows: list[dict] = []
        total = len(steps) * len(scales)
        plan = f"(steps {', '.join(map(str, steps))} at guidance {' and '.join(f'{s:g}' for s in scales)})"
        yield *self._tables(rows, steps, scales), f"**Error curve: 0/{total} round trips...** {plan}"
        try:
            for r in error_curve(self.handlers.pipe, image, prompt, steps, scales):
                rows.append({"steps": r.steps, "guidance": r.guidance_scale, "PSNR (dB)": _db(r.psnr),
                             "latent MSE": float(f"{r.latent_mse:.4g}")})
                head = "done" if len(rows) == total else f"{len(rows)}/{total} round trips..."
                yield *self._tables(rows, steps, scales), f"**Error curve: {head}** {plan}"
        except ValueError as exc:
            raise gr_error(exc, FIELD_LABELS) from exc
        except Exception as exc:
            raise gr_error(exc) from exc

    @staticmethod
    def _tables(rows: list[dict], steps: tuple[int, ...],
                scales: tuple[float, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(plot, table). The plot lists every planned point from the start, PSNR empty until it is measured:
        the page fixes a plot's types and colour legend from the first value it draws, so a first value with
        fewer scales (or none) would leave the later lines undrawn."""
        table = pd.DataFrame(rows, columns=["steps", "guidance", "PSNR (dB)", "latent MSE"]).astype(
            {"steps": "int64", "guidance": "float64", "PSNR (dB)": "float64", "latent MSE": "float64"})
        measured = {(row["guidance"], row["steps"]): row["PSNR (dB)"] for row in rows}
        points = [(n, measured.get((s, n)), f"s = {s:g}") for s in scales for n in steps]
        plot = pd.DataFrame(points, columns=["steps", "PSNR", "guidance"]).astype(
            {"steps": "int64", "PSNR": "float64", "guidance": "object"})  # text: one coloured line per scale
        return plot, table

    def noise_settings(self, inversion: Inversion) -> dict:
        """What the Explore tab needs to start from the inverted noise: DDIM (eta 0) with the inversion's prompt,
        steps, guidance and size maps it back onto the image; change the prompt to edit it."""
        r = inversion.request
        return {
            "prompt": r.prompt, "prompt_2": r.prompt_2, "mode": r.mode, "uncond": "zeros",
            "guidance_scale": r.guidance_scale, "guidance_schedule": "constant", "interval_start": 0.0,
            "interval_stop": 1.0, "guidance_rescale": 0.0, "steps": r.steps, "scheduler": "ddim", "eta": 0.0,
            "num_seeds": 1, "width": r.width, "height": r.height, "init_image": None,
            "start_note": f"Starting from the inverted noise of {r.width}x{r.height}: change the prompt to edit; "
            "Forget it with the button beside Generate.",
            "clear_start": gr.update(visible=True),
            "tabs": gr.Tabs(selected="explore"),  # take the user to where the noise is used
        }

    def use_noise(self, inversion: Inversion | None, before: dict | None = None) -> tuple:
        """(start latents, *the Explore controls in `target_names` order[, what changed, the groups to open]).

        With `describe_changes` (the Explore tab's `changes`), the Explore tab also says which of its settings
        this changed, from `before` (its controls just before), and opens the groups they sit in."""
        if inversion is None:
            raise refused("invert an image first", label="Use this noise in Explore", title="Nothing to use")
        settings = self.noise_settings(inversion)
        gr.Info("The Explore tab now starts from the inverted noise: Generate there to see the image come back.")
        values = (inversion.noise, *(settings[name] for name in self.target_names))
        if self.describe_changes is None:
            return values
        controls = {name: value for name, value in settings.items() if name in CONTROL_NAMES}
        return (*values, *self.describe_changes(before, controls))


@dataclass(frozen=True)
class InvertView:
    """The Invert tab's components that its events read and update."""

    image: gr.Image
    prompt: gr.Textbox
    steps: gr.Slider
    scale: gr.Slider
    invert_btn: gr.Button
    use_btn: gr.Button
    result: gr.Markdown
    noise: gr.Image
    reconstruction: gr.Image
    noise_caption: gr.Markdown
    curve_steps: gr.Textbox
    curve_btn: gr.Button
    curve_status: gr.Markdown
    plot: gr.LinePlot
    table: gr.Dataframe
    last: gr.State  # this session's last Inversion


def build_invert_tab(handlers, view: ExploreView, tabs: gr.Tabs, start_latents: gr.State, explore: Explore) -> None:
    """The tab's components and events. "Use this noise in Explore" sets the Explore tab's components (`view`)
    and says there what changed (`explore`, the Explore tab's behaviour)."""
    targets = {**view.named(), "tabs": tabs}
    names = tuple(name for name in NOISE_TARGETS if name in targets)
    inversions = Inversions(handlers, names, explore.changes)
    tab = _layout(handlers)
    _wire_invert(inversions, tab)
    # First note the Explore controls as they are, to say there afterwards what the noise's settings changed.
    tab.use_btn.click(explore.snapshot, inputs=view.control_list(), outputs=view.before, api_visibility="private",
                      queue=False, show_progress="hidden").then(
        inversions.use_noise, inputs=[tab.last, view.before],
        outputs=[start_latents, *(targets[n] for n in names), view.changed, *view.groups.ordered()],
        api_name="use_inverted_noise")


def _layout(handlers) -> InvertView:
    """The tab's components: the image and its settings beside the round trip, and the error curve below."""
    gr.Markdown(
        "DDIM inversion runs the deterministic DDIM sampler backwards, from an image to the noise that DDIM "
        "(eta 0, same prompt, steps and guidance) maps back onto it (Song et al. 2020). Invert, look at the "
        "round trip, then start the Explore tab from the noise and change the prompt to edit the image."
    )
    if is_toy(handlers.pipe):
        gr.Markdown(render.TOY_INVERSION, elem_id="toy-inversion")
    with gr.Row():
        with gr.Column(scale=2):
            image = FieldImage(label="Image to invert", type="filepath", image_mode=None,
                               sources=["upload", "clipboard"], height=320, elem_id="invert-image")
            prompt = FieldTextbox(label="Inversion prompt", value="a photo", lines=2,
                                info="Describe the image: inversion conditions on this prompt.")
            steps = FieldSlider(*TAB_CONTROLS["inversion_steps"].allowed, value=50, step=1,
                                label=TAB_CONTROLS["inversion_steps"].label,
                                info="More steps: smaller inverse-step errors, a closer round trip.")
            scale = FieldSlider(*TAB_CONTROLS["inversion_guidance_scale"].allowed, value=1, step=0.5,
                                label=TAB_CONTROLS["inversion_guidance_scale"].label,
                                info=SCALE_INFO_TOY if is_toy(handlers.pipe) else SCALE_INFO)
            with gr.Row():
                invert_btn = gr.Button("Invert", variant="primary")
                use_btn = gr.Button("Use this noise in Explore")
        with gr.Column(scale=3):
            result = gr.Markdown(UPLOAD_PROMPT, label="Inversion result",
                                 elem_id="invert-result")
            with gr.Row():
                noise = ServedImage(label="Recovered noise", interactive=False, format="png", elem_id="invert-noise",
                                 buttons=["download", "fullscreen"])
                reconstruction = ServedImage(label="Reconstruction", interactive=False, format="png",
                                          elem_id="invert-reconstruction", buttons=["download", "fullscreen"])
            noise_caption = gr.Markdown(elem_id="invert-noise-caption")
    with gr.Accordion("Reconstruction error vs steps", open=True):
        with gr.Row():
            curve_steps = FieldTextbox(label="Curve steps", value=CURVE_STEPS, scale=3,
                                     info="Comma-separated numbers of steps; each runs at guidance 1 and at the "
                                     f"chosen scale (or {STRONG_GUIDANCE:g} when that is not above 1).")
            curve_btn = gr.Button("Error curve", scale=1)
        curve_status = gr.Markdown(CURVE_PROMPT,
                                   label="Error curve status", elem_id="curve-status")
        # The plot on a row of its own: beside the table it was drawn narrower than it ended up, which cut off its
        # y axis title and the first digits of its labels.
        plot = gr.LinePlot(x="steps", y="PSNR", color="guidance", label="Reconstruction error vs steps",
                           x_title="DDIM steps", y_title="PSNR (dB)", sort="x", elem_id="curve-plot")
        table = gr.Dataframe(label="Reconstruction error table", interactive=False,
                             headers=["steps", "guidance", "PSNR (dB)", "latent MSE"])
        gr.Markdown(WHY_GUIDANCE_BREAKS)
    last = gr.State(None)  # this session's last Inversion
    return InvertView(image, prompt, steps, scale, invert_btn, use_btn, result, noise, reconstruction, noise_caption,
                      curve_steps, curve_btn, curve_status, plot, table, last)


def _wire_invert(inversions: Inversions, tab: InvertView) -> None:
    """Invert, forget a replaced image's results, and the error curve."""
    tab.invert_btn.click(inversions.invert, inputs=[tab.image, tab.prompt, tab.steps, tab.scale],
                         outputs=[tab.noise, tab.reconstruction, tab.result, tab.last], api_name="invert",
                         concurrency_id="gpu").then(
        inversions.noise_caption, inputs=tab.last, outputs=tab.noise_caption, api_visibility="private", queue=False,
        show_progress="hidden")
    # A new (or removed) image: the last image's noise, round trip, curve and table no longer describe it.
    gr.on([tab.image.upload, tab.image.clear], inversions.clear,
          outputs=[tab.noise, tab.reconstruction, tab.result, tab.last, tab.noise_caption, tab.plot, tab.table,
                   tab.curve_status], api_name="clear_inversion", queue=False, show_progress="hidden")
    tab.curve_btn.click(inversions.error_curve, inputs=[tab.image, tab.prompt, tab.scale, tab.curve_steps],
                        outputs=[tab.plot, tab.table, tab.curve_status], api_name="error_curve", concurrency_id="gpu")
