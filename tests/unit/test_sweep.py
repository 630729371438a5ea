"""X/Y sweeps: cells equal the same settings run alone, batching, caps and errors."""

import dataclasses

import numpy as np
import pytest
import torch

from pipeline import GenerationRequest, RequestError, denoise
from pipeline.previews import final_images
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


# A cell run inside a batch against the same request alone: the UNet sees another batch size, so its
# matmuls may block differently. Measured max |batched - alone| on final latents (|latents| up to ~13) over
# the sweeps below: 2.1e-5. The closest neighbouring cells (guidance scale 7.5 against 7.6) differ by 0.03.
CELL_TOL = dict(atol=1e-4, rtol=1e-5)


@pytest.fixture
def cell_latents(monkeypatch):
    """The final latents of every cell a sweep decodes, in the order it decodes them (its `finished` order)."""
    import pipeline.sweep

    decoded = []

    def recording(pipe, latents):
        decoded.append(latents.clone())
        return final_images(pipe, latents)

    monkeypatch.setattr(pipeline.sweep, "final_images", recording)
    return decoded


def assert_cells_equal_runs_alone(pipe, base, x, y, decoded):
    events = list(run_sweep(pipe, base, x, y))
    finished = [cell for event in events for cell, _ in event.finished]
    assert len(finished) == len(decoded) == len(x.values) * len(y.values)
    assert sorted(c.index for c in finished) == list(range(len(finished)))
    finals = {}
    for cell, latents in zip(finished, decoded):
        alone = list(denoise(pipe, cell.request))[-1].latents
        torch.testing.assert_close(latents, alone, **CELL_TOL, msg=lambda m: f"cell {cell.x},{cell.y}: {m}")
        finals[(cell.x, cell.y)] = latents
    return finals


@pytest.mark.parametrize(
    "x, y",
    [
        ("guidance_scale=7.5, 7.6", "mode=cfg, reversed"),
        ("eta=0, 0.5, 1", "guidance_scale=1, 6"),  # DDIM's eta: cells with different eta run in separate batches
        ("guidance_rescale=0, 0.7", "seed=3, 4"),
        ("interval_start=0, 0.5", "scheduler=euler, dpmpp_2m"),
    ],
)
def test_a_cell_equals_the_same_settings_run_alone(tiny_pipe, cell_latents, x, y):
    x_axis, y_axis = (Axis.parse(*text.split("=")) for text in (x, y))
    base = BASE if x_axis.name != "eta" else dataclasses.replace(BASE, scheduler="ddim")
    finals = assert_cells_equal_runs_alone(tiny_pipe, base, x_axis, y_axis, cell_latents)
    # every value on the X axis changes the result, far beyond the tolerance: the test can tell cells apart
    for row in range(len(y_axis.values)):
        first = finals[(0, row)]
        for col in range(1, len(x_axis.values)):
            assert (finals[(col, row)] - first).abs().max() > 1e-2, (x, y, col, row)


def test_cells_with_different_eta_never_share_a_batch():
    cells = sweep_cells(dataclasses.replace(BASE, scheduler="ddim"), Axis.parse("eta", "0, 1"), Axis.parse("seed", "1, 2"))
    groups = batches(cells)
    assert sorted(len(g) for g in groups) == [2, 2]
    assert all(len({c.request.eta for c in g}) == 1 for g in groups)


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
    assert grid.getpixel((grid.width - 20, grid.height - 48)) == (0, 128, 0)  # top-right cell: second image


def _runs(line: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1-D mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], line.astype(np.int8), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def test_grid_cells_are_apart_so_neighbours_do_not_read_as_one_picture():
    """Issue 18: four same-coloured cells drawn edge to edge read as one picture. Between neighbours, across and
    down, lie at least 4 pixels that are not the cells' colour."""
    from PIL import Image

    images = [Image.new("RGB", (40, 30), "red") for _ in range(4)]
    red = np.all(np.asarray(grid_image(images, Axis("eta", (0.0, 1.0)), Axis("seed", (1, 2)))) == (255, 0, 0), axis=2)
    rows, cols = np.flatnonzero(red.any(axis=1)), np.flatnonzero(red.any(axis=0))
    across = _runs(red[rows[0] + 5])
    down = _runs(red[:, cols[0] + 5])
    assert [b - a for a, b in across] == [40, 40] and [b - a for a, b in down] == [30, 30], (across, down)
    assert across[1][0] - across[0][1] >= 4 and down[1][0] - down[0][1] >= 4, (across, down)


def test_the_page_labels_the_grid_with_its_controls_and_modes_labels():
    """Issue 18: the grid's axis titles were ids ("guidance_scale", "cond_only"). The Sweep tab draws them with the
    labels of the controls registry and of the modes table, as its cell captions do."""
    from PIL import Image

    from ui.controls import label_of
    from ui.render import shown_value
    from ui.sweep_tab import cell_caption

    x, y = Axis("guidance_scale", (1.0, 7.5)), Axis("mode", ("cfg", "cond_only"))
    drawn: list[str] = []

    def title(name):
        drawn.append(label_of(name))
        return drawn[-1]

    def shown(name, value):
        drawn.append(shown_value(name, value))
        return drawn[-1]

    grid_image([Image.new("RGB", (40, 30))] * 4, x, y, title=title, shown=shown)
    assert drawn == ["Guidance scale", "Guidance mode", "1", "7.5", "Standard CFG", "Conditional only"]
    assert cell_caption(x, y, 1, 1) == "Guidance scale 7.5 · Guidance mode Conditional only"
