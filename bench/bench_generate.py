"""Our loop against diffusers' own: `generate(pipe, req)` vs `pipe(...)` on the same components.

Both run the same UNet on the same [zeros, prompt] batch with the same scheduler, steps and seeds (one CPU
generator per seed), guidance 7.5. The required ratio is generate() over `pipe(output_type="latent")`.
`generate()` also decodes its final latents into PIL images, which `output_type="latent"` skips, so two
like-for-like rows say where any difference comes from: `denoise()` (our loop without the final decode) over
`pipe(output_type="latent")`, and `generate()` over `pipe(output_type="pil")` (both decode once).

    python -m bench.bench_generate [--device cuda --full-size]
"""

from __future__ import annotations

import sys

import torch

from pipeline import denoise, generate
from pipeline.loop import make_generators

from .common import (
    run_one,
    BenchModels,
    Comparison,
    interleave,
    report,
    request,
    timed,
)


def run(models: BenchModels, args) -> list[Comparison]:
    pipe = models.pipe
    req = request(args)
    last: dict[str, torch.Tensor] = {}

    def ours_generate() -> None:
        for event in generate(pipe, req):
            pass
        last["generate"] = event.latents

    def ours_denoise() -> None:
        for event in denoise(pipe, req):
            pass

    def diffusers_call(output_type: str):
        def call() -> None:
            out = pipe(
                prompt=req.prompt,
                guidance_scale=req.guidance_scale,
                num_inference_steps=req.steps,
                height=req.height,
                width=req.width,
                num_images_per_prompt=len(req.seeds),
                generator=make_generators(req.seeds),
                output_type=output_type,
            )
            if output_type == "latent":
                last["pipe"] = out.images

        return call

    variants = {
        "generate()": ours_generate,
        "pipe(latent)": diffusers_call("latent"),
        "denoise()": ours_denoise,
        "pipe(pil)": diffusers_call("pil"),
    }
    times = interleave({name: timed(fn, args) for name, fn in variants.items()}, args.repeats)
    ours, theirs = last["generate"].float(), last["pipe"].float()
    # Random fp16 weights can overflow; matching infinities and NaNs count as agreement.
    diff = (torch.nan_to_num(ours) - torch.nan_to_num(theirs)).abs().max().item()
    nonfinite = int((~torch.isfinite(ours)).sum())
    comparisons = report(
        f"generate() vs StableDiffusionXLPipeline.__call__, whole run ({req.steps} steps)",
        times,
        [
            Comparison("generate() / pipe(latent)", "generate()", "pipe(latent)", 1.05, "required"),
            Comparison("denoise() / pipe(latent)", "denoise()", "pipe(latent)", 1.05, "same work: no decode in either"),
            Comparison("generate() / pipe(pil)", "generate()", "pipe(pil)", 1.05, "same work: one decode in each"),
        ],
    )
    print(f"  final latents, generate() vs pipe(latent): max |difference| = {diff:.3g} (parity check)")
    if nonfinite:
        print(f"  ({nonfinite} non-finite latent values: random weights overflow; timings are unaffected)")
    return comparisons


def main(argv: list[str] | None = None) -> list[Comparison]:
    return run_one(run, __doc__, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
