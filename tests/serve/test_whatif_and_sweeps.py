"""What-if, forks and sweeps on the Ray backend: the run's cache moves to the page with its steps, so the what-if slider
recombines it there (no worker); a fork sends its resume state to any worker; a sweep's batches fan out over the
workers. Each equals the in-process page's."""

import numpy as np
import pytest

from pipeline.models import ToyPreviewDecoder
from pipeline.presets import load_presets
from serving.frontend import RemoteRuns
from ui import Handlers
from ui.controls import CONTROL_NAMES
from ui.explore import GENERATE_OUTPUTS, Explore
from ui.whatif import WhatIfPanel

from .helpers import pixels


def page_values(**changes) -> dict:
    from tests.ui.test_explore import page_values as values

    return values(**{"steps": 6, "preview": "linear", "width": 128, "height": 128, **changes})


@pytest.fixture(scope="module")
def pages(handle, toy_pipe, tmp_path_factory):
    """The same page twice: runs in-process, and runs on the workers."""
    made = []
    for remote in (None, RemoteRuns(handle)):
        handlers = Handlers(toy_pipe, taesd=ToyPreviewDecoder(toy_pipe.vae), model_name="toy", presets=load_presets(),
                            output_dir=tmp_path_factory.mktemp("outputs"))
        handlers.remote = remote
        explore = Explore(handlers, default_size=128)
        made.append((explore, WhatIfPanel(explore)))
    return made


def final(updates) -> dict:
    return dict(zip(GENERATE_OUTPUTS, list(updates)[-1]))


def test_whatif_and_forks_equal_the_in_process_pages(pages):
    results = []
    for explore, panel in pages:
        values = page_values()
        run = final(explore.generate(*(values[name] for name in CONTROL_NAMES)))
        history = run["history"]
        gallery, summary = panel.preview(history, 3, 2.0, "cfg", "linear")
        fork = final(panel.fork(history, 3, 2.0, "cfg", "linear", 1, "pred_x0"))
        results.append((history, gallery, summary, fork))
    (local, local_gallery, local_summary, local_fork), (remote, remote_gallery, remote_summary, remote_fork) = results
    assert remote.whatif.steps == local.whatif.steps == list(range(1, 7))  # every step's cache reached the page
    for step in local.whatif.steps:
        assert remote.whatif.entry(step).latents.equal(local.whatif.entry(step).latents)
    assert remote_summary == local_summary
    for (a, _), (b, _) in zip(local_gallery, remote_gallery):
        assert np.array_equal(pixels(a), pixels(b))
    assert remote_fork["status"].startswith("**Done: step 6/6**"), remote_fork["status"]
    for a, b in zip(local_fork["downloads"], remote_fork["downloads"]):
        assert np.array_equal(pixels(open(a, "rb").read()), pixels(open(b, "rb").read()))


def test_a_sweep_fans_out_over_the_workers_and_equals_the_in_process_grid(handle, toy_pipe):
    from pipeline.sweep import Axis, run_sweep, sweep_cells

    from .helpers import toy_request

    base, x, y = toy_request(seeds=(1,)), Axis.parse("guidance_scale", "1, 7.5"), Axis.parse("seed", "1, 2, 3")
    remote = RemoteRuns(handle, replicas=2)
    assert [len(group) for group in remote.sweep_batches(sweep_cells(base, x, y))] == [3, 3]  # a share each
    fanned = list(remote.sweep(base, x, y))
    local = list(run_sweep(toy_pipe, base, x, y))
    assert fanned[-1].cells_done == 6 and sum(len(e.finished) for e in fanned) == 6
    assert np.array_equal(pixels(fanned[-1].grid), pixels(local[-1].grid))
