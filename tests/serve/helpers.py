"""What the Ray tests share: a toy request, its in-process run, and PNG bytes as pixels."""

import io

import numpy as np
from PIL import Image

from pipeline import GenerationRequest, generate


def toy_request(**fields) -> GenerationRequest:
    base = dict(prompt="a red circle", steps=6, seeds=(1, 2), width=128, height=128, scheduler="euler")
    return GenerationRequest(**{**base, **fields})


def pixels(image) -> np.ndarray:
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def in_process(pipe, request: GenerationRequest) -> list:
    """The events of the same request run here, as the page's local backend runs it."""
    return list(generate(pipe, request, record=True))


def stream(handle, spec) -> list[dict]:
    """Every payload of a run straight from the worker, in the order they came."""
    return list(handle.options(stream=True, multiplexed_model_id=spec.shape_key()).run.remote(spec))
