"""Step cost of `mode="cond_only"` (one UNet pass per step) against `mode="cfg"` (two passes, batched).

The step cost is the time from the first step's event to the last one's, divided by the steps between them,
so prompt encoding and set-up are left out. `cond_only` should cost about half a CFG step: the ratio shows
whether the loop really skips the unconditional half of the batch, and how well the UNet scales with batch.

    python -m bench.bench_cond_only [--device cuda --full-size]
"""

from __future__ import annotations

import sys

from pipeline import denoise

from .common import (
    run_one,
    BenchModels,
    Comparison,
    clock,
    interleave,
    report,
    request,
)


def step_cost(models: BenchModels, req, args):
    def run() -> float:
        stamps = [clock(args) for _ in denoise(models.pipe, req)]
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    return run


def run(models: BenchModels, args) -> list[Comparison]:
    variants = {
        "cfg step": step_cost(models, request(args, mode="cfg"), args),
        "cond_only step": step_cost(models, request(args, mode="cond_only"), args),
    }
    times = interleave(variants, args.repeats)
    return report(
        f"step cost, cond_only vs cfg (per step, over steps 2..{args.steps})",
        times,
        [Comparison("cond_only / cfg", "cond_only step", "cfg step", 0.6, "required")],
    )


def main(argv: list[str] | None = None) -> list[Comparison]:
    return run_one(run, __doc__, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
