"""One run inside a worker replica, as a plain generator of payloads (no ray here: testable on its own).

`payloads` runs `pipeline.generate` and turns each `StepEvent` into what the page shows (`protocol`): previews
decoded here, in the replica, as small JPEGs; the guidance sizes; the final images as PNG bytes with their
settings. The replica pulls one payload per step on a worker thread, so a run whose caller has gone is never
pulled again, and `stop` (set when the caller cancels) is checked between steps.

`ModelLock` serialises the model steps of the runs that share a replica: transformers' fast tokenizers are not
thread-safe (two runs encoding prompts at once fail with "Sizes of tensors must match except in dimension 2.
Expected size 4 but got size 77", issue 21), and the UNet and VAE calls take the whole device anyway.
"""

from __future__ import annotations

import functools
import io
import threading
import time
from typing import Callable, Iterator

import torch
from PIL import Image, ImageChops

from pipeline import generate
from pipeline.loop import denoise_batch
from pipeline.previews import final_images
from pipeline.decompose import spread
from pipeline.loop import StepEvent, StepRecord
from pipeline.metadata import png_info
from pipeline.models.toy import is_toy, landings
from pipeline.previews import make_preview_decoder

from .protocol import PREVIEW_QUALITY, RunSpec, cpu, pack, unpack


class ModelLock:
    """One lock per replica around each model step: text encoding, UNet call, VAE encode and decode.

    `install(pipe, taesd)` wraps those calls of the loaded models in place (instance attributes), so the library's
    own code (`pipeline.conditioning.encode`, `previews.final_images`...) takes the lock without knowing of it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # reentrant: a locked step may call another (encode_prompt -> text encoders)

    def wrap(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def locked(*args, **kwargs):
            with self.lock:
                return fn(*args, **kwargs)

        return locked

    def install(self, pipe, taesd=None) -> None:
        pipe.encode_prompt = self.wrap(pipe.encode_prompt)
        for vae in (pipe.vae, taesd):
            if vae is not None:
                vae.decode = self.wrap(vae.decode)
                if hasattr(vae, "encode"):
                    vae.encode = self.wrap(vae.encode)

    def __enter__(self):
        self.lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


def jpeg(image: Image.Image | None) -> bytes | None:
    if image is None:
        return None
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=PREVIEW_QUALITY)
    return buffer.getvalue()


def png(image: Image.Image, request, seed: int, model: str) -> bytes:
    """The final image as PNG bytes with its settings in text chunks, as `pipeline.metadata.save_png` writes it."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(request, seed, model))
    return buffer.getvalue()


def _decomposition(decoder, event: StepEvent) -> list[Image.Image | None] | None:
    """The three clean-image estimates and guided minus unconditional, as `ui.streaming.Run` shows them."""
    parts = event.decomposition
    if parts is None:
        return None
    tensors = [parts.uncond, parts.cond, parts.guided]
    decoded = iter(decoder(torch.cat([t for t in tensors if t is not None])))
    uncond, cond, guided = (next(decoded) if t is not None else None for t in tensors)
    difference = None if uncond is None else ImageChops.subtract(guided, uncond, scale=2.0, offset=128)
    return [uncond, cond, guided, difference]


def _record(event: StepEvent) -> bytes:
    """The step as the page's `RunCache.add` takes it, on the CPU: what a what-if or fork needs, nothing more."""
    slim = StepEvent(event.step, event.total, event.timestep, event.seeds, cpu(event.latents), cpu(event.pred_x0),
                     event.guidance_scale, event.unet_passes,
                     record=StepRecord(cpu(event.record.predictions), cpu(event.record.noise_pred),
                                       cpu(event.record.generator_states)))
    return pack(slim)


def _finishing(denoiser, step: int, total: int) -> None:
    """Before the run's last step: a batching denoiser stops counting it in its shape's group, so the others'
    rounds do not wait for it during its final decode (`batching.BatchingDenoiser.finishing`)."""
    if step == total - 1 and hasattr(denoiser, "finishing"):
        denoiser.finishing()


def payloads(pipe, taesd, spec: RunSpec, lock: ModelLock, stop: threading.Event, model_name: str = "",
             denoiser=None, on_step: Callable[[], None] = lambda: None) -> Iterator[dict]:
    """The run `spec` asks for, one payload per step; ends early once `stop` is set (checked between steps).

    `on_step` is called after each step the model ran (the replica counts them); `denoiser`: the UNet call
    (`pipeline.loop.denoise_batch`), by default a plain `Denoiser`."""
    request = spec.request
    decoder = make_preview_decoder(spec.preview, pipe, taesd)
    resume = None if spec.resume is None else unpack(spec.resume)
    events = generate(pipe, request, record=spec.record_every is not None, resume=resume, denoiser=denoiser)
    start, previewed = time.perf_counter(), 0
    try:
        while not stop.is_set():
            event = next(events, None)
            if event is None:
                return
            on_step()
            payload = {"step": event.step, "total": event.total, "unet_chunks": event.unet_chunks,
                       "shared": getattr(denoiser, "shared", 1),  # runs whose rows shared the step's UNet call
                       "guidance_x0": None if event.guidance_x0 is None else [float(n) for n in event.guidance_x0]}
            if event.step % spec.preview_every == 0 or event.is_final:
                with lock:
                    previews = decoder(getattr(event, spec.preview_source))
                    decomposition = _decomposition(decoder, event)
                payload.update(previews=[jpeg(p) for p in previews], previewed=previewed,
                               decomposition=None if decomposition is None else [jpeg(d) for d in decomposition],
                               spread=spread(event.decomposition) if event.decomposition is not None else 0.0)
                previewed += 1
            if spec.record_every and event.step % spec.record_every == 0 and event.record is not None:
                payload["record"] = _record(event)
            if event.images is not None:
                payload["pngs"] = [png(image, request, seed, model_name) for image, seed in zip(event.images, request.seeds)]
                if is_toy(pipe):
                    payload["landed"] = landings(pipe, event.pred_x0)
            payload["elapsed"] = time.perf_counter() - start
            _finishing(denoiser, event.step, event.total)
            yield payload
    finally:
        events.close()


def cell_payloads(pipe, requests: list, stop: threading.Event, denoiser=None,
                  on_step: Callable[[], None] = lambda: None) -> Iterator[dict]:
    """A sweep's batch of same-shape cells (`pipeline.sweep.batches`) as one `denoise_batch`: a payload per step,
    and the cells' final images as PNG bytes (one per request, in order) on the last."""
    events = denoise_batch(pipe, requests, denoiser=denoiser)
    try:
        while not stop.is_set():
            step = next(events, None)
            if step is None:
                return
            on_step()
            payload = {"step": step[0].step, "total": step[0].total}
            _finishing(denoiser, step[0].step, step[0].total)
            if step[0].is_final:
                buffers = [io.BytesIO() for _ in step]
                for event, buffer in zip(step, buffers):
                    final_images(pipe, event.latents)[0].save(buffer, format="PNG")
                payload["pngs"] = [buffer.getvalue() for buffer in buffers]
            yield payload
    finally:
        events.close()


def resume_state(cache, step: int) -> bytes:
    """A fork's resume state at 1-based `step` from the page's copy of the run's cache (about 1 MB at 1024 px)."""
    from pipeline.loop import Resume

    entry = cache.entry(step)
    return pack(Resume(step, entry.latents, entry.generator_states))
