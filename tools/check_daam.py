"""Check `pipeline.attention`'s word maps against the `daam` package (Tang et al. 2022, arXiv 2210.04885) on the
tiny random SDXL, at its own square size (256 px), where both apply. A manual check, not a test: daam is no
requirement of ours (0.2.0 pins diffusers 0.21 and transformers 4.30), so it runs from daam's source on
sys.path, with the plotting and NLP modules it imports at import time (matplotlib, spacy, scipy) stubbed out:
the tracing and heat-map code used here needs none of them.

    pip download --no-deps daam==0.2.0 -d /tmp/daam && tar xzf /tmp/daam/daam-0.2.0.tar.gz -C /tmp/daam
    PYTHONPATH=. python tools/check_daam.py /tmp/daam/daam-0.2.0

What differs by design, so the maps agree by correlation, not value: daam hooks diffusers' own pipeline and
takes the second half of the batch as the prompt's rows (ours: the loop's layout); it averages over layers and
heads where we sum layers of head means (a constant factor); by default it leaves out the mid block (matched
here by asking for it, and reported both ways); and it upsamples each layer's map bicubically to a fixed
square grid (96 x 96 for this model) where we upsample bilinearly to the latent grid (32 x 32). Its maps are
compared after an area resize onto our grid.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
from torch.nn import functional as F

PROMPT = "a red cat sitting on a blue mat"


def _stub(name: str, **attrs) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


def import_daam(source: Path):
    """daam from its source, its import-time-only dependencies stubbed."""
    for name in ("matplotlib", "matplotlib.pyplot", "spacy", "spacy.tokens", "scipy", "scipy.optimize"):
        if name not in sys.modules:
            _stub(name, linear_sum_assignment=None, Token=object, Doc=object, load=None)
    sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]
    sys.modules["spacy"].tokens = sys.modules["spacy.tokens"]
    sys.path.insert(0, str(source))
    import daam
    import daam.trace

    return daam


def daam_maps(daam, pipe, seed: int, steps: int, mid: bool, token_grid: bool = False) -> torch.Tensor:
    """daam's per-position maps of the prompt, (tokens, 96, 96), from diffusers' own pipeline call. With
    `token_grid`, daam is told the latents are the layers' own 16 x 16 grid, so its maps are its raw attention
    averaged over layers and heads and summed over steps, (tokens, 16, 16), with no resampling at all."""
    module = sys.modules["daam.trace"]  # `daam.trace` is the class its package re-exports
    original = module.UNetCrossAttentionLocator
    module.UNetCrossAttentionLocator = lambda restrict=None, locate_middle_block=False: original(restrict, mid)
    try:
        with daam.trace(pipe) as tc:
            if token_grid:
                for hooker in [tc] + list(tc.module):
                    hooker.latent_hw = 16 * 16
            pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, output_type="latent",
                 generator=[torch.Generator().manual_seed(seed)])
            # every layer's factor: daam's default set assumes SD's 64/96 latents, and the tiny model's 16 x 16 token
            # grid against its assumed 96 x 96 is factor 6
            return tc.compute_global_heat_map(factors=tc.all_heat_maps.factors()).heat_maps
    finally:
        module.UNetCrossAttentionLocator = original


def our_maps(pipe, seed: int, steps: int, mid: bool) -> torch.Tensor:
    """Ours, (77, 32, 32); without the mid block's layer where `mid` is False (as daam's default)."""
    from pipeline import GenerationRequest, denoise
    from pipeline.attention import AttentionRecorder, Watch

    recorder = AttentionRecorder((Watch(seed),))
    request = GenerationRequest(prompt=PROMPT, steps=steps, seeds=(seed,), width=256, height=256)
    keep = {}
    if not mid:  # give the mid block its own processor back: our recorder swaps every attn2
        mid_attn = [m for name, m in pipe.unet.named_modules()
                    if name.startswith("mid_block") and name.endswith("attn2")]
        keep = {m: m.set_processor for m in mid_attn}
        for m in mid_attn:
            m.set_processor = lambda processor, _m=m: None  # stays as it was
    try:
        for _ in denoise(pipe, request, watchers=[recorder]):
            pass
    finally:
        for m in keep:
            del m.set_processor
    return recorder.maps[Watch(seed)].total


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def main(source: str) -> None:
    from pipeline import tiny_pipeline  # before daam's stubs: transformers probes for scipy on import
    from pipeline.attention import word_map, words

    daam = import_daam(Path(source))
    pipe = tiny_pipeline(seed=0)
    found = words(pipe, PROMPT)
    for mid in (True, False):
        ours = our_maps(pipe, 1, 20, mid)
        theirs = daam_maps(daam, pipe, 1, 20, mid)
        theirs = F.adaptive_avg_pool2d(theirs[None].float(), ours.shape[-2:])[0]  # onto our 32 x 32 grid
        padded = torch.zeros_like(ours)
        padded[: len(theirs)] = theirs
        label = "with the mid block" if mid else "daam's default layers (no mid block)"
        for grid in (ours.shape[-2:], (16, 16)):  # the latent grid, and the layers' own 16 x 16 token grid
            a, b = (F.adaptive_avg_pool2d(m[None], grid)[0] for m in (ours, padded))
            per_word = [correlation(word_map(a, w), word_map(b, w)) for w in found]
            print(f"{label}, on a {grid[0]}x{grid[1]} grid: per-word correlation "
                  + ", ".join(f"{w.text} {c:.4f}" for w, c in zip(found, per_word))
                  + f"; min {min(per_word):.4f}, mean {sum(per_word) / len(per_word):.4f}")
        # daam's raw attention, upsampled as ours is (bilinear to the latents) and summed over layers
        raw = daam_maps(daam, pipe, 1, 20, mid, token_grid=True).float()
        layers = 4 if mid else 3
        same = F.interpolate(raw[None], size=ours.shape[-2:], mode="bilinear", align_corners=False)[0] * layers
        n = len(same)
        print(f"{label}, daam's raw attention resampled as ours: max |difference| "
              f"{float((same - ours[:n]).abs().max()):.2e} (values up to {float(ours[:n].max()):.2f}), "
              f"correlation {correlation(same, ours[:n]):.6f}")


if __name__ == "__main__":
    main(sys.argv[1])
