"""Text and data the page shows: formulas, status lines, captions, plot tables. No tensor math."""

from __future__ import annotations

import pandas as pd

from pipeline.conditioning import Truncation
from pipeline.guidance import GUIDANCE_MODES
from pipeline.models.toy import ITEMS as TOY_ITEMS
from pipeline.models.toy import VOCABULARY as TOY_VOCABULARY
from pipeline.previews import DECODER_TABLE
from pipeline.schedulers import SCHEDULER_TABLE
from pipeline.schedules import SCHEDULE_TABLE

MODE_CHOICES = [(mode.label, mode.name) for mode in GUIDANCE_MODES.values()]  # the table's order
MODES_WITH_PARAMS = [mode for mode in GUIDANCE_MODES.values() if mode.params]  # each gets a group of controls
SCHEDULE_CHOICES = [(schedule.label, schedule.name) for schedule in SCHEDULE_TABLE.values()]
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
SCHEDULER_CHOICES = [(scheduler.label, scheduler.name) for scheduler in SCHEDULER_TABLE.values()]
UNCOND_CHOICES = [("Zeros (SDXL's default)", "zeros"), ("Empty prompt", "empty")]
PREVIEW_CHOICES = [(decoder.label, decoder.name) for decoder in reversed(DECODER_TABLE.values())]  # cheapest first
PREVIEW_SOURCE_CHOICES = [("Predicted clean image x̂₀", "pred_x0"), ("Noisy latents x_t", "latents")]
CHOICES = {  # control -> its (label, value) choices, to name values as the page shows them
    "mode": MODE_CHOICES,
    "guidance_schedule": SCHEDULE_CHOICES,
    "scheduler": SCHEDULER_CHOICES,
    "uncond": UNCOND_CHOICES,
    "preview": PREVIEW_CHOICES,
    "preview_source": PREVIEW_SOURCE_CHOICES,
}

ENCODER_NAMES = {"text_encoder": "CLIP ViT-L (encoder 1)", "text_encoder_2": "OpenCLIP bigG (encoder 2)"}
# Info lines of the controls whose meaning depends on the mode; `control_notes` replaces them where a mode
# ignores the control.
CONTROL_INFO = {
    "prompt": "Feeds text encoder 1, CLIP ViT-L (and encoder 2 too when Prompt 2 is empty).",
    "prompt_2": "Feeds text encoder 2, OpenCLIP bigG. Empty: the same text as Prompt.",
    "guidance_scale": "s: 1 is no guidance, 0 is the baseline alone.",
    "uncond": "What 'unconditional' means: SDXL's all-zero embeddings, or the encoded empty prompt.",
}
SCALE_LABEL = "Guidance scale"  # the control's label (ui.controls); a mode with its own scale adds its symbol
# Per mode, the controls it does not read, and why (its table entry's `unused`: shown in place of their info line,
# and greyed out).
UNUSED_BY_MODE = {mode.name: dict(mode.unused) for mode in GUIDANCE_MODES.values() if mode.unused}
# Deterministic is not mode-seeking: eta 0 sets the image by the starting noise alone, eta 1 adds fresh noise each
# step; both sample the model's distribution (the probability-flow ODE and DDPM, Song et al. 2020), and neither
# finds its most likely image. Guidance is what concentrates samples on the prompt's likeliest images.
ETA_INFO = ("DDIM's noise after the start: 0 adds none (deterministic: the starting noise alone decides the image), "
            "1 adds fresh noise each step, as DDPM does. Neither seeks the most likely image; guidance does.")
ADHERENCE_INFO = (
    "a: with probability 1 − a the model ignores the prompt (it learned a·p(x | prompt) + (1 − a)·p(x)). "
    "Real models sit somewhere below 1 too, hence guidance; at 1 the model is perfect and needs none."
)
NEGATIVE_PROMPT_NOTE = (
    "This **is the negative prompt** of other tools: diffusers' `negative_prompt` replaces the unconditional "
    "prediction with this prompt's, exactly as here."
)
# Shown instead of an empty guidance-size plot: these modes never compute both predictions.
ONE_PREDICTION = {
    "cond_only": "Conditional only computes one prediction per step (ε_c), so there is no guidance vector "
    "ε_c − ε_u to measure: the plot stays empty.",
    "uncond_only": "Unconditional only computes one prediction per step (ε_u), so there is no guidance vector "
    "ε_c − ε_u to measure: the plot stays empty.",
    "weighted": "Weighted prompts mix several predictions by their weights; no single ε_c − ε_u is measured "
    "here, so the plot stays empty.",
}
FIELD_LABELS = {
    "prompt": "Prompt",
    "prompt_2": "Prompt 2",
    "negative_prompt": "Negative direction prompt",
    "negative_prompt_2": "Negative direction prompt 2",
}


def unavailable_info(unavailable: dict[str, str]) -> str | None:
    """The Guidance mode control's info line where this model cannot run some modes (PAG and SEG in the toy
    world), saying which and why; None where it runs them all."""
    if not unavailable:
        return None
    names = " and ".join(mode_label(name) for name in unavailable)
    reasons = sorted(set(unavailable.values()))
    return f"⊘ {names}: not available for this model, greyed out: {'; '.join(reasons)}."


def unavailable_css(unavailable: dict[str, str]) -> str:
    """Greys out the Guidance mode choices this model cannot run, and keeps them from being picked (Generate
    would refuse them anyway, saying why). Gradio's radio options carry their label in `data-testid`."""
    rules = [f'#ctl-mode label[data-testid="{mode_label(name)}-radio-label"]' for name in unavailable]
    return (f"{', '.join(rules)} {{ opacity: 0.45; pointer-events: none; text-decoration: line-through; }}")


def formula(mode: str) -> str:
    return GUIDANCE_MODES[mode].formula if mode in GUIDANCE_MODES else ""


def mode_label(mode: str) -> str:
    return next((label for label, value in MODE_CHOICES if value == mode), mode)


def shown_value(name: str, value: object) -> str:
    """A setting's value as the page shows it: a choice by its label ("Standard CFG", not "cfg"), a number by %g."""
    labels = dict((v, label) for label, v in CHOICES.get(name, ()))
    if value in labels:
        return labels[value]
    return f"{value:g}" if isinstance(value, float) else str(value)


def control_notes(mode: str) -> dict[str, tuple[str, bool]]:
    """Per mode-dependent control: (info line, whether the mode reads it)."""
    unused = UNUSED_BY_MODE.get(mode, {})
    own = GUIDANCE_MODES[mode].scale if mode in GUIDANCE_MODES else None
    infos = {**CONTROL_INFO, "guidance_scale": own.info} if own else CONTROL_INFO
    return {
        name: (f"⊘ Not used by {mode_label(mode)}: {unused[name]}." if name in unused else info, name not in unused)
        for name, info in infos.items()
    }


def scale_control(mode: str, scale: float | None) -> dict:
    """The Guidance scale control's label, info line and whether the mode reads it: CFG's s, or the scale the
    mode's table entry declares (CFG++'s λ in [0, 1]), saying so where the value it holds would be refused."""
    info, used = control_notes(mode)["guidance_scale"]
    own = GUIDANCE_MODES[mode].scale if mode in GUIDANCE_MODES else None
    if own is None:
        return {"label": SCALE_LABEL, "info": info, "interactive": used}
    low, high = own.range
    if scale is not None and not low <= scale <= high:  # never clamped: Generate refuses it, and the page says why
        info = f"⚠️ {scale:g} is not a {own.symbol} in [{low:g}, {high:g}]: Generate would refuse it. {info}"
    return {"label": f"{SCALE_LABEL} {own.symbol} ({low:g} to {high:g})", "info": info, "interactive": used}


def truncation_warning(report: list[Truncation]) -> str:
    """One line per encoder that cuts text off, quoting what it never sees."""
    lines = []
    for t in report:
        text = t.dropped_text.strip()
        shown = text if len(text) <= 60 else text[:57] + "..."
        lines.append(
            f"⚠️ **{FIELD_LABELS.get(t.field, t.field)}** is {t.dropped_tokens} tokens over the 77-token limit of "
            f"{ENCODER_NAMES.get(t.encoder, t.encoder)}, which ignores: _{shown}_"
        )
    return "\n\n".join(lines)


def status(step: int, total: int, steps_per_second: float, done: bool = False, unet_chunks: int = 1) -> str:
    speed = f"{steps_per_second:.1f} steps/s" if steps_per_second < float("inf") else ""
    head = "Done" if done else "Denoising"
    # a batch too large for the free memory runs in micro-batches (pipeline.memory): same images, slower
    chunks = f" · ran in {unet_chunks} chunks" if unet_chunks > 1 else ""
    return f"**{head}: step {step}/{total}** · {speed}{chunks}"


def starting(request) -> str:
    where = ""
    if request.init_latents is not None:
        where = " from the inverted noise"
    elif request.init_image is not None:
        from pipeline.loop import img2img_start

        taken = request.steps - img2img_start(request.steps, request.strength)
        where = f" from the image: the last {taken} of {request.steps} steps, counted 1 to {taken}"
    if request.forks:
        where += f" along the restored fork path ({len(request.forks)} fork{'s' * (len(request.forks) > 1)})"
    return f"**Starting{where}...** encoding the prompts."


def nothing_ran(message: str = "") -> str:
    why = message.strip() or "a control's value is not allowed (see the message)"
    return f"**Nothing ran:** {why}. The results below are from the last run."


def stopped(step: int, total: int) -> str:
    return f"**Stopped at step {step}/{total}.** Its previews are kept: use the step slider to revisit them."


def weights_line(weights: list[float]) -> str:
    shown = " + ".join(f"{w:g}" for w in weights if w) or "0"
    return f"Baseline weight: 1 − ({shown}) = **{1 - sum(weights):g}**"


def scale_table(scales: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"step": list(range(1, len(scales) + 1)), "guidance scale": scales})


SCALE_PLOT = "Guidance scale per step"  # in CFG's s: a mode with its own scale plots the CFG scale it equals


def scale_plot_title(mode: str, scale: float | None) -> str:
    """The schedule plot's title: s per step, or where a mode's own scale equals a CFG scale per step (CFG++'s λ,
    its `Scale.equivalent`), that ω_t, for the λ it holds (while that λ is one Generate takes)."""
    own = GUIDANCE_MODES[mode].scale if mode in GUIDANCE_MODES else None
    if own is None or own.equivalent is None:
        return SCALE_PLOT
    low, high = own.range
    held = f" = {scale:g}" if isinstance(scale, (int, float)) and low <= scale <= high else ""
    return f"Equivalent CFG scale ω_t per step, for {own.symbol}{held}"


def equivalent_line(request, symbol: str, omegas: list[float]) -> str:
    """Why the plot shows ω_t, not the mode's own scale (CFG++: Chung et al. 2024, written as CFG)."""
    scheduler = SCHEDULER_TABLE[request.scheduler].label
    return (f"**The plot is the equivalent CFG scale**, not {symbol}: ω_t = {symbol} σ_t / (σ_t − σ_t₋₁) with "
            f"{scheduler} over {request.steps} steps: **{omegas[0]:.3g}** at step 1, **{omegas[-1]:.3g}** at the last. Smaller "
            f"steps make ω_t larger: that is why the same {symbol} guides harder with more steps.")


def passes_line(passes: list[int], request) -> str:
    mode = GUIDANCE_MODES[request.mode]
    # Guiding every step: the mode's passes at its full scale, with no zero-init, schedule or interval.
    full = len(mode.needs(request.guidance_scale, request)) * len(passes) if mode.guided else sum(passes)
    saved = full - sum(passes)
    tail = f", {saved} fewer than guiding every step" if saved > 0 else ""
    return f"UNet passes per image: **{sum(passes)}** over {len(passes)} steps{tail}."


def strength_line(start: int, steps: int) -> str:
    if start >= steps:
        return "Strength 0: no denoising; the result is the image through the VAE and back."
    taken = steps - start
    return (f"Runs the last **{taken} of {steps}** steps from the noised image; the status counts them 1 to {taken}.")


DECOMPOSITION_NAMES = ["unconditional x̂₀", "conditional x̂₀", "guided x̂₀", "guided − unconditional"]


def decomposition_gallery(parts: list) -> list:
    return [(image, name) for image, name in zip(parts, DECOMPOSITION_NAMES) if image is not None]


def decomposition_note(seed: int, step: int | None, total: int, parts: list | None, mode: str = "cfg") -> str:
    """Which seed and step the panels show, and why any are missing."""
    where = f"step {step}/{total}" if step is not None else "waiting for the first previewed step"
    line = f"**Decomposition of seed {seed}**, {where}: unconditional · conditional · guided x̂₀ · guided − unconditional."
    if mode in ONE_PREDICTION and parts and (parts[0] is None or parts[1] is None):
        line += f" {mode_label(mode)} runs one prediction per step: the other panel and the difference do not exist."
    elif parts and parts[0] is None and parts[1] is not None:
        line += (" Only the conditional and guided panels here: this step is outside the guidance interval "
                 "(or its scale is 1), so only ε_c was predicted and there is no ε_u to show.")
    elif parts and parts[1] is None:
        line += " Only the unconditional prediction runs in this mode: no conditional panel or difference."
    return line


def most_different(step: int, spread: float, last: int, last_spread: float) -> str:
    """Why the decomposition opens at `step` once a run is done (`History.most_different`)."""
    if step == last:
        return f"Step {step} is where they differ most (RMS {spread:.3f} in the latent)."
    return (f"**Opened at step {step}, where the three x̂₀ differ most** (RMS {spread:.3f} in the latent; at step "
            f"{last}, {last_spread:.3f}): guidance decides the picture early, and by the end the estimates agree. "
            "Move **Revisit step** to see the others.")


def landing_note(landed: list, seeds: tuple[int, ...], request) -> str:
    """Toy world, after a run: the data item each seed landed on; for any that is not a data item, by how far it
    missed, and why (`pipeline.models.toy.landings`)."""
    on = [f"seed {seed}: {spot.item.caption}" for seed, spot in zip(seeds, landed) if spot.on_data]
    off = [f"seed {seed}: not a data item (distance {spot.distance:.3g} to the nearest, {spot.item.caption})"
           for seed, spot in zip(seeds, landed) if not spot.on_data]
    lines = [f"**Data items:** {' · '.join(on)}."] if on else []
    if off:
        bound = landed[0].bound
        lines.append(f"**{' · '.join(off)}**: {_off_data_reason(request)}. <small>(Within {bound:.2g} of an item, "
                     "half the smallest distance between two items, an image counts as that item.)</small>")
    return "\n\n".join(lines)


def _off_data_reason(request) -> str:
    from pipeline.loop import img2img_start

    if request.init_image is not None and img2img_start(request.steps, request.strength) >= request.steps:
        return "strength 0 denoises nothing, so this is the start image itself"
    if request.mode == "autoguidance":
        # At the last, nearly clean steps the blurred-data denoiser takes the sample's leftover noise for part of
        # the picture (within its blur) while the exact one removes it: their difference is that noise, reversed.
        return ("autoguidance's step away from the weak model: near the end the blurred-data denoiser keeps the "
                "sample's leftover noise as part of the picture, the exact one removes it, and "
                "x̂₀ + s_a (x̂_c − x̂_weak) pushes that difference further, off the item")
    if GUIDANCE_MODES[request.mode].guided and request.guidance_scale not in (0.0, 1.0):
        return ("guidance extrapolated past the data: where its two predictions pick different items, "
                "x̂₀ = x̂_u + s (x̂_c − x̂_u) lands beyond both, so shapes fuse and colours saturate")
    return "an average of several items: too few steps for the exact denoiser to settle on one"


def caption(seed: int, step: int | None = None, total: int | None = None, off_data: bool = False) -> str:
    if step is not None:
        return f"seed {seed} · step {step}/{total}"
    return f"seed {seed} · not a data item" if off_data else f"seed {seed}"


def describe_changes(before: dict | None, after: dict, labels: dict[str, str], groups: dict[str, str]) -> str:
    """"Changed: Steps 30 → 12, Scheduler (in Previews…) …" for the controls a preset, PNG or link set."""
    if before is None:
        return ""
    changes = []
    for name, value in after.items():
        old = before.get(name)
        if name not in labels or same(old, value):
            continue
        where = f" (in {groups[name]})" if name in groups else ""
        changes.append(f"{labels[name]}{where}: {_shown(name, old)} → {_shown(name, value)}")
    return "**Changed:** " + "; ".join(changes) + "." if changes else "Nothing changed: the controls already had these values."


def same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _shown(name: str, value) -> str:
    choices = CHOICES.get(name)
    if choices:
        return next((label for label, v in choices if v == value), str(value))
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return f"“{value}”" if value else "(empty)"
    return str(value)


def banner(model: str, reason: str | None, memory: str = "") -> str:
    """The line above the page: which model runs (and why, if not the one asked for), then `memory`, the
    memory mode and why it was chosen (`pipeline.memory.MemoryChoice.describe`)."""
    text = _model_banner(model, reason)
    line = f"<small>{memory[:1].upper()}{memory[1:]}.</small>" if memory else ""
    return "\n\n".join(part for part in (text, line) if part)


def _model_banner(model: str, reason: str | None) -> str:
    if model == "toy":
        why = f" The model you asked for could not be used ({reason})." if reason else ""
        return (
            f"**toy world: an exact denoiser over {len(TOY_ITEMS)} drawn shapes; SDXL's weights are not loaded.**"
            f"{why} Its UNet computes the best possible denoiser of its data exactly, so its pictures are real and "
            "guidance does to them what the theory says. For SDXL, run `python app.py --model <hub id, folder or "
            ".safetensors>` where the weights are available."
        )
    if reason is None and model != "tiny":
        return ""
    why = f" ({reason})" if reason else ""
    return (
        f"⚠️ **tiny random demo model: images are noise.** The real model could not be used{why}. "
        "Every control works and the math is real; run `python app.py --model <hub id, folder or .safetensors>` "
        "where the weights are available to see pictures."
        if reason
        else "⚠️ **tiny random demo model: images are noise.** Started with `--model tiny`: every control works "
        "and the math is real, but the weights are random."
    )


def toy_words() -> str:
    """The toy world's vocabulary, for a line next to the prompts."""
    groups = " · ".join(" ".join(words) for words in TOY_VOCABULARY.values())
    return (
        f"**Words the toy world knows:** {groups}. Other words are ignored; a word counts in Prompt or "
        "Prompt 2. Several words of one kind mean any of them (\"red blue\": red or blue)."
    )


TOY_START_ITEM = TOY_ITEMS[next(i for i, item in enumerate(TOY_ITEMS) if item.caption == "big blue square, top left")]
# Measured on the page's defaults (tests/unit/test_toy_img2img.py checks every claim on these seeds).
TOY_IMG2IMG = (
    "**The toy world snaps to its data.** Its exact denoiser knows only its 96 items, so a run ends on one of them "
    "(or beyond them, where guidance extrapolates): a start image that is not an item comes out as an item nearby "
    "that the prompt and the noise allow, at low strength as at high. To see strength matter, start from an item: "
    f"the button puts the {TOY_START_ITEM.caption} in. With \"red circle\", seeds 1 and 2 and the page's defaults "
    "(scale 7.5, 30 steps, adherence 0.5), strength up to 0.7 keeps the big blue square on both seeds; at 0.8 seed 1 "
    "turns into a big blue circle; at 0.9 neither is left (a big green square, a big red circle)."
)
TOY_INVERSION = (
    "**What inversion teaches in the toy world.** Its denoiser is exact and so it *memorises*: every sample "
    "is one of its drawn shapes, and whatever separates an image from the nearest shape it reads as noise. A data "
    "image (one the toy generated, saved as PNG) comes back at any number of steps and at guidance 1 or 7.5 alike: "
    "measured 53 to 69 dB PSNR from 5 to 100 steps (\"red circle\", seeds 1 to 4; prompts \"a photo\", \"red "
    "circle\", \"circle\"), a little closer with more steps. An image that is not in the data does not come "
    "back: the round trip lands on a data item (a red circle drawn off the grid: 17 to 20 dB at any steps). A model "
    "that generalises, as SDXL does, has a smooth ODE between its training images, and there the round trip "
    "improves with steps and worsens with guidance (Mokady et al. 2022)."
)



def recovered_noise_caption(std: float, correlation: float, toy: bool) -> str:
    """Under the Invert tab's "Recovered noise": what the image shows, its measured statistics, and why it can look
    like the picture itself."""
    text = (f"**Recovered noise** is x_T drawn with the Linear preview's latent-to-RGB map, so fresh Gaussian noise "
            f"would be colour speckle all over. This one: spread σ = {std:.2f} (fresh noise: 1), correlation with the "
            f"image's own latents {correlation:+.2f} (fresh noise: about 0). DDIM inversion is deterministic and adds "
            "no randomness: x_T is computed from the image, step by step, so it can keep the image's structure.")
    if toy:
        # An inverse DDIM step is x_{t+1} = sqrt(ā_{t+1}) x̂₀ + sqrt(1 - ā_{t+1}) ε̂, with ε̂ read off x_t and x̂₀
        # (Song et al. 2020, eq. 12): every x_t is a mix of the image's latents and the estimates x̂₀ met on the way.
        text += (" In the toy world it looks like the picture itself: each inverse step mixes the current latent with "
                 "the denoiser's clean estimate x̂₀, and the toy's exact denoiser estimates x̂₀ as a weighted average of "
                 "its 96 drawn shapes (guidance combines two such averages; for one of its own images, almost always "
                 "that very image), so x_T is the image and those shapes, scaled, with no noise in it. How well DDIM "
                 "maps it back is the PSNR above. A model that generalises, such as SDXL, gives an x_T closer to "
                 "noise, though it keeps some structure.")
    return text
