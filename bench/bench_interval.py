"""A whole run with guidance on for only half the steps, against guidance on throughout (issue: guidance lab).

Outside the guidance interval the loop runs one UNet pass per step instead of two, so guiding only the
first half of the steps should cost about 0.75 of a fully guided run (target: at most 0.8).

    python -m bench.bench_interval [--device cuda --full-size]
"""

from __future__ import annotations

import sys

from pipeline import denoise

from .common import BenchModels, Comparison, interleave, report, request, run_one, timed


def run(models: BenchModels, args) -> list[Comparison]:
    def whole_run(req):
        return timed(lambda: list(denoise(models.pipe, req)), args)

    variants = {
        "guided throughout": whole_run(request(args, mode="cfg")),
        "guided first half": whole_run(request(args, mode="cfg", guidance_interval=(0.0, 0.5))),
    }
    times = interleave(variants, args.repeats)
    return report(
        f"guidance interval (0, 0.5) vs (0, 1), whole run of {args.steps} steps",
        times,
        [Comparison("half-interval / full", "guided first half", "guided throughout", 0.8, "required")],
    )


def main(argv: list[str] | None = None) -> list[Comparison]:
    return run_one(run, __doc__, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
