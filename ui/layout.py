"""The page: Gradio Blocks layout and event wiring. Behaviour lives in `handlers`."""

from __future__ import annotations

import gradio as gr

from pipeline.request import GUIDANCE_SCALE_RANGE, MAX_SEEDS, SEED_RANGE, SIZE_MULTIPLE, SIZE_RANGE, STEPS_RANGE

from . import render
from .handlers import CONTROL_NAMES, Handlers

CACHE_LIFETIME = (600, 3600)  # every 10 min, delete streamed frames older than 1 h: each frame is a file


class NamedErrors:
    """Gradio checks bounds and choices before a handler runs, with messages like "Value 0 is less than
    minimum value 1." that do not say which input. API clients send many fields at once, so these
    components put their label in front of the message."""

    is_template = True  # render with Gradio's own component of the base class

    def get_block_name(self) -> str:
        # Gradio names the Svelte component after `__class__.__base__`, which here is this mixin: the page
        # would ask for a "namederrors" component that does not exist, and never finish loading.
        gradio_class = next(c for c in type(self).__mro__ if c.__module__.startswith("gradio."))
        return gradio_class.__name__.lower()

    get_block_class = get_block_name

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error as exc:
            if getattr(self, "minimum", None) is not None or getattr(self, "maximum", None) is not None:
                detail = f"must be from {self.minimum} to {self.maximum}, got {payload}"
            else:
                detail = exc.message
            raise gr.Error(f"{self.label}: {detail}", title="Invalid input") from exc


class FieldSlider(NamedErrors, gr.Slider):
    pass


class FieldNumber(NamedErrors, gr.Number):
    pass


class FieldRadio(NamedErrors, gr.Radio):
    pass


class FieldDropdown(NamedErrors, gr.Dropdown):
    pass


def build_demo(handlers: Handlers, banner: str = "", default_size: int = 1024) -> gr.Blocks:
    with gr.Blocks(title="CFG Explorer", delete_cache=CACHE_LIFETIME) as demo:
        gr.Markdown(
            "# CFG Explorer\nWatch classifier-free guidance shape an SDXL image, step by step. "
            "Change one thing at a time and compare seeds side by side."
        )
        gr.Markdown(banner, visible=bool(banner), elem_id="model-banner")
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(
                    label="Prompt", lines=2, value="a watercolor painting of an otter",
                    info="Feeds text encoder 1, CLIP ViT-L (and encoder 2 too when Prompt 2 is empty).",
                )
                prompt_2 = gr.Textbox(
                    label="Prompt 2", lines=1, value="",
                    info="Feeds text encoder 2, OpenCLIP bigG. Empty: the same text as Prompt.",
                )
                token_warning = gr.Markdown()
                mode = FieldRadio(render.MODE_CHOICES, value="cfg", label="Guidance mode")
                formula = gr.Markdown(render.formula("cfg"))
                negative_prompt = gr.Textbox(
                    label="Negative direction prompt", visible=False, value="solar system with 9 planets",
                    info="Its prediction replaces the baseline: guidance steers away from it.",
                )
                negative_prompt_2 = gr.Textbox(
                    label="Negative direction prompt 2", visible=False, value="",
                    info="For text encoder 2. Empty: the same text as the negative direction prompt.",
                )
                uncond = FieldRadio(
                    render.UNCOND_CHOICES, value="zeros", label="Unconditional baseline",
                    info="What 'unconditional' means: SDXL's all-zero embeddings, or the encoded empty prompt.",
                )
                guidance_scale = FieldSlider(
                    *GUIDANCE_SCALE_RANGE, value=7.5, step=0.5, label="Guidance scale",
                    info="s: 1 is no guidance, 0 is the baseline alone.",
                )
                with gr.Row():
                    steps = FieldSlider(*STEPS_RANGE, value=30, step=1, label="Steps")
                    scheduler = FieldDropdown(render.SCHEDULER_CHOICES, value="euler", label="Scheduler")
                eta = FieldSlider(
                    0.0, 1.0, value=0.0, step=0.05, label="Eta", visible=False,
                    info="DDIM's noise: 0 is deterministic (mode-seeking), 1 is as random as DDPM.",
                )
                with gr.Row():
                    seed = FieldNumber(value=1, precision=0, minimum=SEED_RANGE[0], maximum=SEED_RANGE[1], label="Seed")
                    num_seeds = FieldSlider(1, MAX_SEEDS, value=2, step=1, label="Number of seeds",
                                            info="Consecutive seeds from Seed, side by side.")
                with gr.Row():
                    width = FieldSlider(*SIZE_RANGE, value=default_size, step=SIZE_MULTIPLE, label="Width")
                    height = FieldSlider(*SIZE_RANGE, value=default_size, step=SIZE_MULTIPLE, label="Height")
                with gr.Accordion("Previews", open=True):
                    preview = FieldRadio(render.PREVIEW_CHOICES, value="tiny", label="Preview decoder")
                    with gr.Row():
                        preview_every = FieldSlider(1, 50, value=1, step=1, label="Preview every N steps")
                        preview_source = FieldRadio(render.PREVIEW_SOURCE_CHOICES, value="pred_x0", label="Preview shows")
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary")
                    stop_btn = gr.Button("Stop", variant="stop")
            with gr.Column(scale=3):
                status = gr.Markdown("Press **Generate**.", elem_id="status")
                gallery = gr.Gallery(
                    label="Images", columns=4, format="jpeg", object_fit="contain", height="auto",
                    buttons=["download", "fullscreen"], elem_id="images",
                )
                step_slider = gr.Slider(1, 30, value=30, step=1, label="Revisit step", interactive=False,
                                        info="After a run: show the preview of any step.")
                plot = gr.LinePlot(
                    x="step", y="guidance_norm", color="seed", label="Guidance vector size ‖ε_c − ε_u‖ per step",
                    x_title="step", y_title="‖ε_c − ε_u‖",
                )
                downloads = gr.File(label="Final PNGs (settings embedded; drop one below to restore them)",
                                    file_count="multiple", interactive=False)
                with gr.Accordion("Presets, links and saved settings", open=True):
                    presets = gr.Dataset(
                        label="Presets", components=[gr.Textbox(visible=False)], type="index",
                        samples=[[p.name] for p in handlers.presets], samples_per_page=20,
                    )
                    with gr.Row():
                        link_btn = gr.Button("Copy link")
                        link = gr.Textbox(label="Link to these settings", buttons=["copy"], interactive=False)
                    png_in = gr.File(label="Drop a CFG Explorer PNG to restore its settings", file_types=[".png"],
                                     type="filepath")
        history = gr.State(None)

        controls = [prompt, prompt_2, mode, negative_prompt, negative_prompt_2, uncond, guidance_scale, steps, seed,
                    num_seeds, scheduler, eta, width, height, preview, preview_every, preview_source]
        assert [c.label for c in controls] and len(controls) == len(CONTROL_NAMES)

        run_event = generate_btn.click(
            handlers.bound("generate"), inputs=controls, outputs=[gallery, status, step_slider, plot, downloads, history],
            api_name="generate", concurrency_id="gpu",
        )
        stop_btn.click(lambda: "**Stopped.**", outputs=status, cancels=[run_event], api_name="stop")
        step_slider.release(handlers.show_step, inputs=[history, step_slider, seed, num_seeds], outputs=gallery,
                            api_name="show_step")
        mode.change(handlers.describe_mode, inputs=mode, outputs=[formula, negative_prompt, negative_prompt_2],
                    api_name="describe_mode")
        scheduler.change(handlers.describe_scheduler, inputs=scheduler, outputs=eta, api_name="describe_scheduler")
        gr.on(
            [prompt.change, prompt_2.change, negative_prompt.change, negative_prompt_2.change, mode.change],
            handlers.count_tokens, inputs=[prompt, prompt_2, negative_prompt, negative_prompt_2, mode],
            outputs=token_warning, api_name="count_tokens", show_progress="hidden",
        )
        presets.click(handlers.load_preset, inputs=presets, outputs=controls, api_name="load_preset")
        link_btn.click(handlers.bound("share_link"), inputs=controls, outputs=link, api_name="share_link").then(
            None, inputs=link, js="(link) => { if (navigator.clipboard) navigator.clipboard.writeText(link); }"
        )
        png_in.upload(handlers.restore_from_png, inputs=png_in, outputs=controls, api_name="restore_from_png")
        demo.load(handlers.restore_from_query, outputs=controls, api_name="restore_from_url")
    return demo
