"""Image outputs whose files are never rewritten while the page may still fetch them.

Gradio caches a PIL image or array under a folder named after the hash of its encoded bytes, and writes it
there in place (`processing_utils.save_pil_to_cache`: `write_bytes`, no temporary file). A gallery saves
its items on a thread pool. So two equal images in one update (the decomposition's conditional and guided
x̂₀ once they agree, a sweep's identical cells), or an image sent again while its first copy is still being
fetched, rewrite one file while it is served: the browser got a truncated body (ERR_CONTENT_LENGTH_MISMATCH,
h11's "Too little data for declared Content-Length") and showed a broken image.

Here each image is written once under a name of its own, to a temporary file renamed into place
(`os.replace`, atomic), inside Gradio's cache folder, and Gradio is handed the path: it serves a file that
is already in its cache as it is, without copying or rewriting it.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

FOLDER = "served"  # under Gradio's cache folder, so Gradio serves the files and its `delete_cache` ages them
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def write_image(image: Image.Image | np.ndarray, folder: Path, format: str = "png") -> str:
    """Write `image` to a new file in `folder` (a name no other call gets), atomically; return its path."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if format.lower() in ("jpeg", "jpg") and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.{EXTENSIONS.get(format.lower(), format.lower())}"
    fd, staging = tempfile.mkstemp(dir=folder, prefix=".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            image.save(out, format=format.upper())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return str(path)


class _Served:
    """Hands Gradio the path of a file written by `write_image` for each PIL image or array in a value."""

    is_template = True

    def get_block_name(self) -> str:  # the Svelte component of the Gradio class (see fields.NamedErrors)
        return next(c for c in type(self).__mro__ if c.__module__.startswith("gradio.")).__name__.lower()

    get_block_class = get_block_name

    def _file(self, item):
        if isinstance(item, (Image.Image, np.ndarray)):
            return write_image(item, Path(self.GRADIO_CACHE) / FOLDER, self.format)
        return item


class ServedGallery(_Served, gr.Gallery):
    """`gr.Gallery` whose images each get a file of their own (see the module docstring)."""

    def postprocess(self, value):
        if isinstance(value, list):
            value = [(self._file(item[0]), *item[1:]) if isinstance(item, tuple) else self._file(item)
                     for item in value]
        return super().postprocess(value)


class ServedImage(_Served, gr.Image):
    """`gr.Image` whose image gets a file of its own (see the module docstring)."""

    def postprocess(self, value):
        return super().postprocess(self._file(value))
