"""What-if and fork (issue 10): a what-if re-render against one UNet step (target: at least 20x cheaper, so a
ratio of at most 0.05), a fork at k = N/2 against a full run (target: at most 0.55), and the cache's memory per
step per seed at 1024 px and 256 px, computed from shapes and dtypes and measured on a recorded run.

The what-if is timed alone and with the linear latent-to-RGB preview that shows it; the UNet step is one call
with the batch a CFG step runs (2 x seeds). The fork and the full run both end with the final VAE decode.

    python -m bench.bench_whatif [--device cuda --full-size] [--steps N --seeds N]
"""

from __future__ import annotations

import dataclasses
import sys

import torch

from pipeline import generate
from pipeline.conditioning import encode
from pipeline.loop import _time_ids
from pipeline.previews import LinearPreview
from pipeline.whatif import RunCache, fork, whatif

from .common import BenchModels, Comparison, interleave, report, request, run_one, timed


def _unet_step(models: BenchModels, req) -> callable:
    """One UNet call on a CFG step's batch: [baseline, prompt] for every seed, as the loop sends it."""
    pipe = models.pipe
    embeds = encode(pipe, req.prompt)
    dtype, device, batch = embeds.prompt_embeds.dtype, pipe._execution_device, 2 * len(req.seeds)
    f = pipe.vae_scale_factor
    sample = torch.randn(batch, pipe.unet.config.in_channels, req.height // f, req.width // f, dtype=dtype, device=device)
    hidden = embeds.prompt_embeds.to(device).repeat(batch, 1, 1)
    added = {"text_embeds": embeds.pooled.to(device).repeat(batch, 1), "time_ids": _time_ids(pipe, req, dtype).repeat(batch, 1)}
    t = torch.tensor(500.0, device=device)

    @torch.no_grad()
    def step() -> None:
        pipe.unet(sample, t, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False)

    return step


def _memory(models: BenchModels, args) -> None:
    """Per step per seed: computed from shapes and dtypes (fp16 as on a GPU, and the run's dtype), and measured."""
    pipe = models.pipe
    print("\n== what-if cache memory per step per seed (CFG: 2 predictions, combined, pred_x0, latents, generator)")
    for size in (1024, 256):
        req = request(args, width=size, height=size, steps=2, seeds=(1,))
        cache = RunCache(pipe, req)
        computed = cache.step_bytes(1)
        latent = pipe.unet.config.in_channels * (size // pipe.vae_scale_factor) ** 2
        fp16 = latent * ((2 + 2) * 2 + 4) + 5056  # pred_x0 stays float32: the schedulers upcast
        list(cache.consume(generate(pipe, req, record=True)))
        measured = cache.nbytes / len(cache.steps)
        print(f"  {size:>4} px: computed {computed / 2**20:6.2f} MiB ({pipe.unet.dtype}), {fp16 / 2**20:6.2f} MiB (fp16); "
              f"measured {measured / 2**20:6.2f} MiB; 30 steps x 4 seeds in fp16: {30 * 4 * fp16 / 2**20:6.1f} MiB")


def run(models: BenchModels, args) -> list[Comparison]:
    pipe = models.pipe
    # k = N/2 must leave several steps on both sides, and a fork's fixed costs (prompt encoding, the final decode)
    # are shared with the full run, so the ratio is (N/2 + c) / (N + c) in UNet steps: 16 steps keep c's share
    # nearer what SDXL's usual 30 steps give than 8 would (8 steps measured 0.534 to 0.566 run to run at 512 px).
    steps = max(args.steps, 16)
    req = request(args, steps=steps)
    cache = RunCache(pipe, req)
    list(cache.consume(generate(pipe, req, record=True)))
    k = steps // 2
    new = dataclasses.replace(cache.settings_at(k), guidance_scale=3.0)
    preview = LinearPreview(scale_factor=pipe.vae_scale_factor)

    variants = {
        "one UNet step (CFG batch)": timed(_unet_step(models, req), args),
        "what-if": timed(lambda: whatif(cache, k, 3.0), args),
        "what-if + linear preview": timed(lambda: preview(whatif(cache, k, 3.0).pred_x0), args),
        f"fork at k = {k} of {steps}": timed(lambda: list(fork(pipe, cache, k, new)), args),
        f"full run of {steps} steps": timed(lambda: list(generate(pipe, req)), args),
    }
    times = interleave(variants, args.repeats)
    comparisons = report(
        f"what-if and fork: {steps} steps, {len(req.seeds)} seed(s), {req.width} px",
        times,
        [
            Comparison("what-if / UNet step", "what-if", "one UNet step (CFG batch)", 0.05, "required (20x)"),
            Comparison("what-if + preview / UNet step", "what-if + linear preview", "one UNet step (CFG batch)", None),
            Comparison("fork at N/2 / full run", f"fork at k = {k} of {steps}", f"full run of {steps} steps", 0.55,
                       "required"),
        ],
    )
    _memory(models, args)
    return comparisons


def main(argv: list[str] | None = None) -> list[Comparison]:
    return run_one(run, __doc__, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
