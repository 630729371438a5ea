"""The guidance-size plot and the decomposition as a toy run streams them (handlers called directly, no server).

Issue 18: in reversed, negative and Perp-Neg modes the plot's ‖ε_c − ε_u‖ reached ~400 at the last steps (an ε
difference is an x̂₀ difference over a vanishing σ) and flattened the rest; at scale 1 it was empty with no
note; in negative mode it was still titled ‖ε_c − ε_u‖; an empty table drew "Infinite extent" warnings
(point 7, 15). The decomposition opened at the last step, where its three x̂₀ agree (point 8).
"""

from __future__ import annotations

import math

import pytest

from pipeline import GenerationRequest, generate
from pipeline.decompose import spread
from pipeline.models import ToyPreviewDecoder
from ui import Handlers, guidance_plot
from ui.controls import CONTROL_NAMES
from ui.explore import GENERATE_OUTPUTS, Explore
from tests.ui.test_explore import page_values

BOUND = 1.0  # RMS of an x̂₀ difference in the toy's latent units: its data items lie within [-1, 1]
MODES = {  # mode -> the toy prompt pair its presets use
    "reversed": {"prompt": "red circle"},
    "negative_direction": {"prompt": "red circle", "negative_prompt": "blue square"},
    "perp_neg": {"prompt": "red", "negative_prompt": "red square"},
}


@pytest.fixture(scope="module")
def explore(toy_pipe, tmp_path_factory):
    handlers = Handlers(toy_pipe, taesd=ToyPreviewDecoder(toy_pipe.vae), model_name="toy",
                        output_dir=tmp_path_factory.mktemp("outputs"))
    return Explore(handlers, default_size=256)


def stream(explore, **changes) -> tuple[list[dict], object]:
    """Every update of one run, by output name, and the run's history."""
    settings = page_values(**{"prompt": "red circle", "width": 256, "height": 256, "steps": 12, "num_seeds": 2,
                              "preview": "linear", **changes})
    run = explore.start_run({name: settings[name] for name in CONTROL_NAMES})
    updates = [dict(zip(GENERATE_OUTPUTS, out)) for out in explore.stream(run)]
    return updates, run.history


def plot_updates(updates) -> list[dict]:
    """The plot's updates, leaving out the skips (an update that changes nothing)."""
    return [u["norm_plot"] for u in updates if set(u["norm_plot"]) - {"__type__"}]


@pytest.mark.parametrize("mode", list(MODES))
def test_the_plot_stays_bounded_where_the_eps_difference_spikes(explore, toy_pipe, mode):
    # The exact data model (adherence 1), where every seed commits to one item and the eps difference spikes.
    request = GenerationRequest(**MODES[mode], mode=mode, steps=12, seeds=(1, 2), width=256, height=256,
                                decompose_seed=1, prompt_adherence=1.0)
    events = list(generate(toy_pipe, request))
    eps = max(float(e.guidance_norm.max()) for e in events)
    x0 = [e.guidance_x0 for e in events]
    assert max(float(v.max()) for v in x0) < BOUND
    if mode != "perp_neg":  # what the old plot showed: the last steps' ε difference over a vanishing σ
        assert eps > 50 * max(float(v.max()) for v in x0)
    for event in events:  # the same quantity as the decomposition's own x̂₀ panels, computed independently
        parts = event.decomposition
        rms = float((parts.cond - parts.uncond).double().pow(2).mean().sqrt())
        assert float(event.guidance_x0[0]) == pytest.approx(rms, rel=1e-4, abs=1e-7)

    updates, _ = stream(explore, mode=mode, **MODES[mode])
    shown = plot_updates(updates)
    assert shown[0]["visible"] is False and "value" not in shown[0]  # hidden, not sent an empty table
    drawn = [u["value"] for u in shown if "value" in u]
    assert drawn and all(not table.empty for table in drawn)
    assert all(math.isfinite(v) and 0 <= v < BOUND for v in drawn[-1][guidance_plot.Y])
    assert len(drawn[-1]) == 12 * 2  # every step, both seeds
    symbol = "n" if mode == "negative_direction" else "u"
    assert f"x̂₀(ε_c) − x̂₀(ε_{symbol})" in shown[0]["label"] and f"ε_{symbol}" in shown[0]["y_title"]


@pytest.mark.parametrize("changes, why", [
    ({"guidance_scale": 1.0}, "at scale 1 (no guidance) only ε_c is predicted"),
    ({"mode": "cond_only"}, "Conditional only computes one prediction per step"),
    ({"mode": "uncond_only"}, "Unconditional only computes one prediction per step"),
    ({"interval_start": 0.51, "interval_stop": 0.55}, "outside the guidance interval only ε_c is predicted"),
])
def test_an_empty_plot_says_why(explore, changes, why):
    updates, _ = stream(explore, **changes)
    assert why in updates[0]["norm_note"]
    assert all("value" not in u and u["visible"] is False for u in plot_updates(updates))


def test_steps_outside_the_interval_are_named(explore):
    updates, history = stream(explore, interval_start=0.25, interval_stop=0.75)
    assert "No point at step 1–3, 10–12: outside the guidance interval" in updates[0]["norm_note"]
    assert sorted(history.norms) == list(range(4, 10))


def test_the_decomposition_opens_where_its_parts_differ_most(explore, toy_pipe):
    updates, history = stream(explore, decompose=True, decompose_seed=1)
    final = updates[-1]
    step = max(history.spreads, key=history.spreads.get)
    assert 1 <= step <= 3 and history.spreads[step] > 100 * history.spreads[12]  # early, not at the end
    assert f"step {step}/12" in final["decomposition_note"]
    assert f"Opened at step {step}, where the three x̂₀ differ most" in final["decomposition_note"]
    shown = [image for image, _ in final["decomposition"]]
    assert [image.tobytes() for image in shown] == [image.tobytes() for image in history.decomposition_at(step)]
    # the spreads are the decomposition's own: recompute one from the loop's events
    request = GenerationRequest(prompt="red circle", steps=12, seeds=(1, 2), width=256, height=256, decompose_seed=1)
    events = list(generate(toy_pipe, request))
    assert history.spreads[step] == pytest.approx(spread(events[step - 1].decomposition), rel=1e-6)
