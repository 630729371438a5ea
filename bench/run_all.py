"""Run every benchmark on one set of models and print a summary of the ratios against their targets.

    python -m bench [--device cuda --full-size] [--size N --steps N --repeats N --seeds N --threads N]
"""

from __future__ import annotations

import sys
import time

from . import (bench_app, bench_attention, bench_cond_only, bench_generate, bench_interval, bench_previews, bench_toy,
               bench_whatif)
from .common import build_models, describe, finish_args, load_warning, parser

BENCHMARKS = (bench_generate, bench_cond_only, bench_interval, bench_previews, bench_toy, bench_whatif, bench_attention,
              bench_app)


def main(argv: list[str] | None = None) -> int:
    args = finish_args(parser(__doc__.splitlines()[0]).parse_args(argv))
    start = time.perf_counter()
    models = build_models(args.device, args.full_size)
    print(f"built models in {time.perf_counter() - start:.1f} s")
    describe(args, models)
    comparisons = []
    for bench in BENCHMARKS:
        comparisons += bench.run(models, args)
    print("\n== summary (ratio of medians; paired: median of back-to-back ratios)")
    width = max(len(c.label) for c in comparisons)
    print(f"  {'ratio':<{width}}  {'value':>7}  {'paired':>7}  {'target':>7}  verdict")
    for c in comparisons:
        target = f"<= {c.target:.2f}" if c.target is not None else "-"
        note = f"   {c.note}" if c.note else ""
        print(f"  {c.label:<{width}}  {c.ratio:7.3f}  {c.paired:7.3f}  {target:>7}  {c.verdict}{note}")
    if not args.device.startswith("cuda") and (warning := load_warning()):
        print(warning)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
