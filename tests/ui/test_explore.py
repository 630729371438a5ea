"""The Explore tab's behaviour, called directly (no server): what it shows after an edit, a preset, a PNG, the
Invert tab's noise or a refused value."""

import gradio as gr
import pytest
from PIL import Image

from pipeline import GenerationRequest
from pipeline.inversion import invert
from pipeline.metadata import save_png
from pipeline.presets import load_presets
from ui import Handlers
from ui.controls import CONTROL_NAMES
from ui.fields import refused
from ui.explore import GROUP_TITLES, PAGE_DEFAULTS, REQUEST_DEFAULTS, Explore
from ui.invert_tab import NOISE_TARGETS, Inversions
from ui.streaming import History


@pytest.fixture(scope="module")
def explore(tiny_pipe):
    return Explore(Handlers(tiny_pipe, model_name="tiny", presets=load_presets()), default_size=64)


def page_values(**changes) -> dict:
    """The controls as the page first shows them, with `changes`."""
    values = {**REQUEST_DEFAULTS, **PAGE_DEFAULTS, "width": 64, "height": 64, "decompose": False,
              "decompose_seed": 1, "preview_every": 1, "preview_source": "pred_x0",
              **{f"weight_{k}": 0.0 for k in range(1, 5)}}
    return {**values, **changes}


def opened(groups) -> set[str]:
    return {title for title, update in zip(GROUP_TITLES.values(), groups) if update.get("open")}


def test_revisited_captions_are_the_runs_seeds(explore):
    history = History.for_run(4, (7, 8), 1)
    for step in (1, 2, 3, 4):
        history.add(step, 4, [Image.new("RGB", (8, 8))] * 2, step - 1)
    gallery, _, _, _ = explore.show_step(history, 2)
    assert [caption for _, caption in gallery] == ["seed 7 · step 2/4", "seed 8 · step 2/4"]


def test_a_preset_keeps_the_models_size_and_its_text_stays_on_the_page(explore):
    presets = load_presets()
    index = next(i for i, p in enumerate(presets) if p.request.scheduler == "ddim")
    before = page_values()
    result = explore.load_preset(index, before)
    settings = dict(zip(CONTROL_NAMES, result))
    note, changed = result[len(CONTROL_NAMES):len(CONTROL_NAMES) + 2]
    assert (settings["width"], settings["height"]) == (64, 64)  # not 1024 on a 64 px model
    assert presets[index].name in note and presets[index].description[:40] in note
    assert "Scheduler: Euler (deterministic) → DDIM (eta sets the noise)" in changed
    assert "Width" not in changed


def test_a_restored_png_says_what_changed_and_opens_those_groups(explore, tmp_path):
    request = GenerationRequest(prompt="an otter", steps=12, seeds=(1, 2), width=64, height=128, guidance_rescale=0.5)
    path = save_png(Image.new("RGB", (64, 128)), tmp_path / "x.png", request, seed=1)
    note, *groups = explore.restore_from_png(str(path), page_values())[len(CONTROL_NAMES):]
    assert "x.png" in note and "Steps: 30 → 12" in note
    assert "Height (in Size and start image (img2img)): 64 → 128" in note
    assert opened(groups) == {GROUP_TITLES["size"], GROUP_TITLES["schedule"]}


def test_use_this_noise_says_what_changed_in_explore(explore, tiny_pipe):
    inversions = Inversions(explore.handlers, NOISE_TARGETS, explore.changes)
    inversion = invert(tiny_pipe, Image.new("RGB", (64, 64), (200, 80, 40)), "an orange card", 2, 1.0)
    result = inversions.use_noise(inversion, page_values(guidance_schedule="linear"))
    note, *groups = result[1 + len(NOISE_TARGETS):]
    assert "Scheduler: Euler (deterministic) → DDIM (eta sets the noise)" in note and "Steps: 30 → 2" in note
    assert GROUP_TITLES["schedule"] in opened(groups)  # Guidance schedule went back to Constant, inside it


def test_controls_a_mode_ignores_are_marked(explore):
    shown = explore.describe_mode("negative_direction")
    negative, (prompt, prompt_2, uncond) = shown[1], shown[-3:]
    assert negative["visible"] is True
    assert uncond["interactive"] is False and "Not used by Custom negative direction" in uncond["info"]
    assert prompt["interactive"] is True
    prompt, prompt_2, uncond = explore.describe_mode("weighted")[-3:]
    assert not prompt["interactive"] and not prompt_2["interactive"]
    assert not explore.describe_scale("weighted", 7.5)["interactive"]
    assert explore.describe_guidance_schedule("linear")["visible"] is False
    assert explore.describe_guidance_schedule("cutoff")["visible"] is True


def test_fdg_greys_the_guidance_scale_it_ignores(explore):
    """Issue 20: FDG's per-level scales replace s, so the Guidance scale slider is greyed with the reason, from the
    mode's table entry (`Mode.unused`), as for the modes that never read it; CFG's is live."""
    fdg = explore.describe_scale("fdg", 7.5)
    assert fdg["interactive"] is False
    assert fdg["info"] == "⊘ Not used by FDG (frequency-decoupled): its scales per level (FDG scales) replace it."
    assert explore.describe_scale("cfg", 7.5)["interactive"] is True
    assert not explore.describe_scale("cond_only", 7.5)["interactive"]


def test_decomposition_seed_follows_seed(explore):
    assert explore.follow_seed(50, 2, 1) == 50
    assert explore.follow_seed(50, 2, 51) == gr.skip()


def test_a_refused_value_marks_its_control_and_says_nothing_ran(explore):
    with pytest.raises(gr.Error, match="Width: must be a multiple of 8") as refusal:
        explore.check_run(*[page_values(width=100)[name] for name in CONTROL_NAMES])
    assert refusal.value.label == "Width"  # the error carries its control: the page reads no label out of the text
    status, style, *groups = explore.explain_invalid(refusal.value.message, refusal.value.label)
    assert status.startswith("**Nothing ran:** Width") and "#ctl-width" in style
    assert opened(groups) == {GROUP_TITLES["size"]}


def test_generates_check_marks_a_refusal_in_its_own_response(explore):
    """Issue 20: Generate's check answers a refusal in its own response (the status, the mark, the groups to open,
    and no new run token, so nothing runs): the page needs no second event to learn which control it was. A
    refusal of an input's own check reaches it in place of the inputs (`NamedErrorBlocks.preprocess_data`)."""
    values = [page_values(width=100)[name] for name in CONTROL_NAMES]
    with pytest.warns(UserWarning, match="Width: must be a multiple of 8"):  # gr.Warning, outside a page's request
        status, style, *groups, token = explore.check_and_mark(*values)
    assert status.startswith("**Nothing ran:** Width: must be a multiple of 8") and "#ctl-width" in style
    assert opened(groups) == {GROUP_TITLES["size"]} and token == gr.skip()
    seed = refused("is required", label="Seed")
    with pytest.warns(UserWarning, match="Seed: is required"):
        status, style, *_, token = explore.check_and_mark(*[seed] * len(CONTROL_NAMES), init_image=seed,
                                                          start_latents=seed, fork_path=seed)
    assert status.startswith("**Nothing ran:** Seed: is required") and "#ctl-seed" in style and token == gr.skip()
    valid = [page_values(preview="linear")[name] for name in CONTROL_NAMES]
    status, style, *groups, token = explore.check_and_mark(*valid)
    assert style == "" and status == gr.skip() and opened(groups) == set()  # a valid run unmarks, then runs:
    assert token != explore.check_and_mark(*valid)[-1]  # a new token each time, whose change starts it


def test_cfg_pp_names_its_scale_lambda_and_says_7_5_is_refused(explore):
    """The scale's name, range and info come from the mode's table entry (`Mode.scale`); switching to CFG++ at
    the page's 7.5 says Generate would refuse it (never clamped), and a λ in [0, 1] drops the warning."""
    cfg = explore.describe_scale("cfg", 7.5)
    assert cfg["label"] == "Guidance scale" and cfg["info"].startswith("s: 1 is no guidance")
    at_default = explore.describe_scale("cfg_pp", 7.5)
    assert at_default["label"] == "Guidance scale λ (0 to 1)" and at_default["interactive"]
    assert "7.5 is not a λ in [0, 1]: Generate would refuse it" in at_default["info"]
    assert "λ from 0 to 1" in explore.describe_scale("cfg_pp", 0.6)["info"]
    assert "refuse it" not in explore.describe_scale("cfg_pp", 0.6)["info"]
    assert "7.5 is refused, not clamped" in explore.describe_mode("cfg_pp")[0]  # the mode's note
    values = page_values(mode="cfg_pp", guidance_scale=7.5)
    plot, line = explore.describe_schedule(*[values[name] for name in CONTROL_NAMES])
    assert plot == gr.skip() and "must be in [0, 1], got 7.5" in line


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_cfg_pp_schedule_plot_is_the_equivalent_cfg_scale(explore, tiny_pipe, scheduler):
    """The plot draws w_t = l sigma_t / (sigma_t - sigma_next) on the run's scheduler and steps (exactly
    `equivalent_scales`), 1 outside the guidance interval; the line under it says why more steps guide harder."""
    from pipeline.guidance.modes.cfg_pp import equivalent_scales
    from pipeline.schedulers import SCHEDULER_CLASSES, run_sigmas

    values = page_values(mode="cfg_pp", guidance_scale=0.6, steps=12, scheduler=scheduler, eta=0.0,
                         interval_start=0.0, interval_stop=0.75)
    plot, line = explore.describe_schedule(*[values[name] for name in CONTROL_NAMES])
    fresh = SCHEDULER_CLASSES[scheduler].from_config(tiny_pipe.scheduler.config)
    expected = equivalent_scales(0.6, run_sigmas(fresh, 12))
    assert list(plot["guidance scale"]) == expected[:9] + [1.0] * 3
    assert expected[0] < expected[8]  # smaller steps near the end of the interval: a larger w_t
    assert "equivalent CFG scale" in line and "same λ guides harder with more steps" in line
    plot, line = explore.describe_schedule(*[page_values(steps=12)[name] for name in CONTROL_NAMES])
    assert list(plot["guidance scale"]) == [7.5] * 12
    assert "ω_t" not in line


def test_the_schedule_plot_is_titled_by_what_it_draws(explore):
    """Issue 20: for CFG++ the plot draws the equivalent CFG scale ω_t, and its title says so (it said "Guidance
    scale per step"); a λ that Generate would refuse leaves the value out, and CFG's title is s again."""
    assert explore.describe_scale_plot("cfg_pp", 0.6)["label"] == "Equivalent CFG scale ω_t per step, for λ = 0.6"
    assert explore.describe_scale_plot("cfg_pp", 7.5)["label"] == "Equivalent CFG scale ω_t per step, for λ"
    assert explore.describe_scale_plot("cfg", 7.5)["label"] == "Guidance scale per step"
