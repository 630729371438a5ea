"""What the Word maps tab shows: heat maps over an image, the token positions of both encoders, and its notes."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from pipeline.attention import Position, Word
from pipeline.attribution import Dropped, shown_word

INTRO = (
    "For one seed of the **Explore** tab's settings: where the model read each word of the prompt, and what each "
    "word changes. **Map words** records the cross-attention maps of the prompt's prediction (DAAM, Tang et al. "
    "2022): per word, the attention weight that each latent pixel gave its token positions, averaged over heads, "
    "summed over the UNet's cross-attention layers and the steps. **Ablate words** drops one word at a time and "
    "shows how the model's clean-image estimate x̂₀ changes at one step (one extra UNet pass per word)."
)
TOY_NOTE = (
    "**The toy world has no attention maps:** its denoiser is the exact posterior mean over 96 drawn shapes, and "
    "it reads the words straight from the embeddings, with no attention layers to record. Word ablation works "
    "here, and exactly: dropping \"left\" widens the shapes from the left ones to both sides, so x̂₀ loses "
    "mass on the left. Early steps show it; late ones hardly, since the noisy image has already decided."
)
MIXED_NOTE = (
    "**Prompt 2 differs from Prompt, so these maps mix them.** SDXL concatenates its two text encoders' "
    "hidden states per token position (CLIP ViT-L's 768 values, then OpenCLIP bigG's 1280), and the UNet's keys "
    "are computed from that concatenation. So the map at position i is one map for token i of Prompt *and* "
    "token i of Prompt 2 together; it cannot be split between them. Each map below is named by both: "
    "Prompt's word, then what Prompt 2 holds at the same positions."
)
MAP_PROMPT = "Press **Map words** to record the maps of one seed (a run of the Explore tab's settings)."
ABLATE_PROMPT = "Press **Ablate words** to see what each word changes at the ablation step."
ENCODERS = ("Prompt (encoder 1)", "Prompt 2 (encoder 2)")
# An inferno-like ramp: black, purple, red, orange, pale yellow.
RAMP = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float32)
HEAT_OPACITY = 0.75  # at the hottest pixel; where a word has no weight the image shows through


def colormap(heat: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) RGB on the ramp."""
    x = np.clip(heat, 0, 1) * (len(RAMP) - 1)
    low = np.minimum(x.astype(int), len(RAMP) - 2)
    frac = (x - low)[..., None]
    return RAMP[low] * (1 - frac) + RAMP[low + 1] * frac


def overlay(image: Image.Image, heat: Tensor) -> Image.Image:
    """A (h, w) map over `image`: upsampled to its size, scaled by its own maximum (each word's map is shown at
    full range; its caption says how large it is), coloured on the ramp and blended in by its value."""
    up = F.interpolate(heat[None, None].float(), size=(image.height, image.width), mode="bilinear",
                       align_corners=False)[0, 0]
    top = float(up.max())
    scaled = (up / top).clamp(0, 1).numpy() if top > 0 else np.zeros(tuple(up.shape), np.float32)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    alpha = HEAT_OPACITY * scaled[..., None]
    return Image.fromarray(np.clip(base * (1 - alpha) + colormap(scaled) * alpha, 0, 255).astype(np.uint8))


def word_label(word: Word) -> str:
    """"red", or "red / lue" where Prompt 2 holds something else at the word's positions."""
    return f"{word.text} / {word.text_2 or '–'}" if word.mixed else word.text


def map_caption(word: Word, share: float) -> str:
    return f"{word_label(word)} · {share:.1%} of attention"


def share_of_attention(maps: Tensor, per_pixel: float) -> Tensor:
    """(W, h, w) word maps -> (W,): each word's mean weight per pixel as a fraction of all weight there."""
    return maps.mean(dim=(1, 2)) / per_pixel


def token_table(positions: list[Position], differs: bool) -> str:
    """Each position with both encoders' tokens; where Prompt 2 is empty both hold Prompt (diffusers' rule)."""
    second = ENCODERS[1] if differs else f"{ENCODERS[1]}: Prompt again"
    rows = [f"| i | {ENCODERS[0]} | {second} |", "|---|---|---|"]
    for p in positions:
        mark = " ⚠" if differs and p.token != p.token_2 else ""
        rows.append(f"| {p.index} | {_cell(p.token)} | {_cell(p.token_2)}{mark} |")
    rows.append("\nEncoder 1 is CLIP ViT-L, encoder 2 OpenCLIP bigG. " + (
        "⚠: the two encoders hold different tokens at this position; its map serves both." if differs else
        "Prompt 2 is empty or the same, so both hold Prompt; one map per position serves both."))
    return "\n".join(rows)


def _cell(token: str) -> str:
    """A token as code in a table cell: its pipes escaped, or "<|endoftext|>" would split the row."""
    return "`" + token.replace("|", "\\|") + "`"


def maps_status(seed: int, steps: int, layers: int, words: int, seconds: float) -> str:
    return (f"**Mapped:** seed {seed}, {words} words, {steps} steps × {layers} cross-attention layers, "
            f"in {seconds:.1f} s. Each pixel's weights over the 77 token positions sum to 1 per layer and step; "
            "the rest of each pixel's weight goes to the start token, the end token and its padding.")


def step_label(step: int, total: int) -> str:
    return "summed over all steps, over the final image" if step == 0 else f"step {step}/{total}, over its x̂₀"


def ablation_caption(dropped: Dropped, rms: float) -> tuple[str, str]:
    """Captions of one ablation's two images: x̂₀ without the word, and where it changed."""
    where = "" if dropped.field == "prompt" else " (Prompt 2)"
    word = shown_word(dropped.word)
    return f"without “{word}”{where}", f"Δ “{word}”{where} · rms {rms:.3f}"


def ablation_status(step: int, total: int, seed: int, words: int, seconds: float) -> str:
    return (f"**Ablated:** seed {seed}, step {step}/{total}: {words} words, one extra UNet row each, in "
            f"{seconds:.1f} s. Beside each x̂₀ without a word: where it differs from x̂₀ with the whole prompt "
            "(rms over the latent channels, per pixel).")


def to_image_size(image: Image.Image, like: Image.Image) -> Image.Image:
    return image if image.size == like.size else image.resize(like.size, Image.Resampling.BILINEAR)


def rms(delta: Tensor) -> float:
    return float(torch.sqrt(delta.pow(2).mean()))
