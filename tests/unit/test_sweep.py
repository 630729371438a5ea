"""X/Y sweeps: cells equal the same settings run alone, batching, caps and errors."""

import numpy as np
import pytest

from pipeline import GenerationRequest, RequestError, generate
from pipeline.sweep import MAX_CELLS, Axis, batches, grid_image, run_sweep, sweep_cells

BASE = GenerationRequest(prompt="an otter", steps=3, seeds=(3, 4), width=64, height=64, scheduler="euler_a")


def test_cells_cover_the_grid_in_row_order():
    cells = sweep_cells(BASE, Axis.parse("guidance_scale", "1, 5"), Axis.parse("seed", "7, 8, 9"))
    assert [(c.x, c.y) for c in cells] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert [(c.request.guidance_scale, c.request.seeds) for c in cells[:3]] == [(1.0, (7,)), (5.0, (7,)), (1.0, (8,))]
    other = sweep_cells(BASE, Axis.parse("interval_start", "0, 0.5"), Axis.parse("mode", "cfg, apg"))
    assert other[1].request.guidance_interval == (0.5, 1.0) and other[2].request.mode == "apg"
    assert all(c.request.seeds == (3,) for c in other)  # no seed axis: the base's first seed


def test_batches_share_what_a_batch_must_share():
    cells = sweep_cells(BASE, Axis.parse("scheduler", "euler, ddim"), Axis.parse("guidance_scale", "1, 2, 3"))
    groups = batches(cells, max_batch=2)
    assert sorted(len(g) for g in groups) == [1, 1, 2, 2]
    assert all(len({c.request.scheduler for c in g}) == 1 for g in groups)


def test_a_cell_equals_the_same_settings_run_alone(tiny_pipe):
    x, y = Axis.parse("guidance_scale", "1, 6"), Axis.parse("mode", "cfg, reversed")
    events = list(run_sweep(tiny_pipe, BASE, x, y))
    finished = [pair for event in events for pair in event.finished]
    assert len(finished) == 4
    for cell, image in finished:
        alone = list(generate(tiny_pipe, cell.request))[-1].images[0]
        diff = np.abs(np.asarray(image, int) - np.asarray(alone, int)).max()
        assert diff <= 2, (cell.request.mode, cell.request.guidance_scale, diff)  # within 2/255: batch-size rounding


def test_progress_streams_and_the_grid_comes_last(tiny_pipe):
    x, y = Axis.parse("seed", "1, 2"), Axis.parse("scheduler", "euler, ddim")
    events = list(run_sweep(tiny_pipe, BASE, x, y))
    assert [e.grid is None for e in events] == [True] * (len(events) - 1) + [False]
    assert [e.cells_done for e in events if e.finished] == [2, 4]  # two batches, one per scheduler
    assert events[0].step == 1 and events[0].total_steps == 3
    grid = events[-1].grid
    assert grid.width > 2 * 64 and grid.height > 2 * 64  # two cells each way, plus the labels


def test_grid_size_is_capped():
    many = Axis("seed", tuple(range(9)))
    with pytest.raises(RequestError, match=str(MAX_CELLS)):
        sweep_cells(BASE, many, Axis("guidance_scale", tuple(float(v) for v in range(8))))


def test_axes_must_differ_and_be_known():
    with pytest.raises(RequestError, match="differ"):
        sweep_cells(BASE, Axis.parse("seed", "1"), Axis.parse("seed", "2"))
    with pytest.raises(RequestError) as info:
        Axis.parse("width", "64")
    assert info.value.field == "sweep_axis"


def test_bad_values_name_their_field():
    with pytest.raises(RequestError) as info:
        Axis.parse("guidance_scale", "1, lots")
    assert info.value.field == "guidance_scale"
    with pytest.raises(RequestError) as info:
        sweep_cells(BASE, Axis.parse("guidance_scale", "1, 99"), Axis.parse("seed", "1"))
    assert info.value.field == "guidance_scale"


def test_grid_image_layout():
    from PIL import Image

    images = [Image.new("RGB", (40, 30), c) for c in ("red", "green", "blue", "white")]
    grid = grid_image(images, Axis("eta", (0.0, 1.0)), Axis("seed", (1, 2)))
    assert grid.getpixel((grid.width - 1, grid.height - 1)) == (255, 255, 255)
    assert grid.getpixel((grid.width - 20, grid.height - 45)) == (0, 128, 0)  # top-right cell: second image
