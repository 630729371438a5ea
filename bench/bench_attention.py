"""The cost of recording cross-attention maps (pipeline/attention.py) against the same run without.

The recorder swaps the `attn2` processors for a subclass of diffusers' `AttnProcessor2_0` that returns what its
parent returns and, for the watched rows (here the prompt's prediction for seed 1, every step, as the page
records it), recomputes softmax(Q Kᵀ / √d) beside it, averages the heads, upsamples to the latent grid and adds
it up per step. Both variants run the whole loop (prompt encoding included, no decoding); the target is
at most 1.10 on the default CPU model.

    python -m bench.bench_attention [--device cuda --full-size]
"""

from __future__ import annotations

import sys

from pipeline import denoise
from pipeline.attention import AttentionRecorder, Watch

from .common import BenchModels, Comparison, interleave, report, request, run_one, timed


def run(models: BenchModels, args) -> list[Comparison]:
    req = request(args)

    def plain() -> None:
        for _ in denoise(models.pipe, req):
            pass

    def recorded() -> None:
        recorder = AttentionRecorder((Watch(req.seeds[0]),))
        for _ in denoise(models.pipe, req, watchers=[recorder]):
            pass
        recorder.maps[Watch(req.seeds[0])].total.sum().item()  # the maps are made (a device sync on cuda)

    times = interleave({"run": timed(plain, args), "run recording maps": timed(recorded, args)}, args.repeats)
    return report(
        f"recording cross-attention maps (seed 1's prompt rows, every step) vs the same run without, "
        f"{args.steps} steps",
        times,
        [Comparison("recording / plain", "run recording maps", "run", 1.10)],
    )


def main(argv: list[str] | None = None) -> list[Comparison]:
    return run_one(run, __doc__, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
