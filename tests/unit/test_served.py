"""Every image output of the page gets a file of its own: none is rewritten while the page may fetch it.

Gradio's own caching wrote equal images to one path, in place and from a thread pool, so the decomposition's
identical x̂₀ panels were served truncated (ERR_CONTENT_LENGTH_MISMATCH) in 2 of 4 runs (issue 18, point 2).
"""

from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from ui.served import write_image


@pytest.fixture(scope="module")
def image_outputs(tiny_pipe, tmp_path_factory):
    from ui import Handlers, build_demo

    handlers = Handlers(tiny_pipe, model_name="tiny", output_dir=tmp_path_factory.mktemp("outputs"))
    demo = build_demo(handlers, default_size=64)
    outputs = {block._id for fn in demo.fns.values() for block in fn.outputs}  # what a handler can send images to
    # Image components of type "filepath" are sent files the handler wrote itself, each in a new folder (the
    # sweep's grid PNG; the start image, which the Invert tab only clears): the others are sent pictures.
    blocks = [b for b in demo.blocks.values() if isinstance(b, (gr.Gallery, gr.Image)) and b._id in outputs
              and not (isinstance(b, gr.Image) and b.type == "filepath")]
    assert {b.elem_id for b in blocks} == {"images", "decomposition", "whatif", "sweep-cells", "invert-noise",
                                           "invert-reconstruction", "lab-samples", "word-maps", "word-ablation"}
    return blocks


def paths(block, value) -> list[str]:
    data = block.postprocess(value)
    if isinstance(block, gr.Gallery):
        return [item.image.path for item in data.root]
    return [data.path]


def test_equal_images_get_distinct_files_and_a_file_is_never_rewritten(image_outputs):
    red = Image.new("RGB", (16, 16), (200, 30, 30))
    for block in image_outputs:
        send = (lambda: [(red.copy(), "a"), (red.copy(), "b"), (red.copy(), "c")]) if isinstance(block, gr.Gallery) \
            else (lambda: red.copy())
        first = paths(block, send())
        assert len(set(first)) == len(first), f"{block.elem_id}: equal images share one file"
        before = {p: (Path(p).stat().st_mtime_ns, Path(p).stat().st_ino, Path(p).read_bytes()) for p in first}
        again = paths(block, send())  # the same pictures in the next update
        assert not set(again) & set(first), f"{block.elem_id}: an image sent again reuses a served file"
        for p, (mtime, inode, data) in before.items():
            stat = Path(p).stat()
            assert (stat.st_mtime_ns, stat.st_ino, Path(p).read_bytes()) == (mtime, inode, data), \
                f"{block.elem_id}: {p} was rewritten"


def test_a_file_is_complete_once_its_name_exists(tmp_path):
    """Written to a temporary name and renamed: a reader never sees the final name with part of the bytes."""
    image = Image.new("RGB", (512, 512), (10, 200, 10))
    written = [write_image(image, tmp_path, "png") for _ in range(4)]
    size = Path(written[0]).stat().st_size
    assert len(set(written)) == 4 and all(Path(p).stat().st_size == size for p in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(p).name for p in written), "a staging file is left"

    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            for p in tmp_path.glob("*.png"):
                seen.append(p.stat().st_size)

    watcher = threading.Thread(target=watch)
    watcher.start()
    for _ in range(20):
        write_image(image, tmp_path, "png")
    done.set()
    watcher.join()
    assert set(seen) <= {size}, "a file was seen under its final name before it was complete"
