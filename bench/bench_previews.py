"""What a preview every step costs, per decoder, against a run that only consumes the events.

Each variant iterates `denoise(pipe, req)`; the preview variants also call `decoder(event.pred_x0)` on every
event (to PIL images, at most 512 px, as the UI streams them). The ratio is the whole run's time with
previews over the time without. The same runs also time each decoder call, which gives a second estimate,
`in-run` = run / (run - decoder calls), that a busy machine disturbs far less: both parts ran back to back.

    python -m bench.bench_previews [--device cuda --full-size]
"""

from __future__ import annotations

import statistics
import sys

from pipeline import denoise
from pipeline.previews import make_preview_decoder

from .common import (
    run_one,
    BenchModels,
    Comparison,
    clock,
    interleave,
    report,
    request,
    timed,
)

DECODERS = (
    ("linear", "linear", 1.02),
    ("tiny", "tiny autoencoder", 1.10),
    ("vae", "full VAE", None),
)


def run(models: BenchModels, args) -> list[Comparison]:
    req = request(args)
    decode_times: dict[str, list[float]] = {}  # per run (the warm-up first): seconds spent in decoder calls

    def consume(name: str, decoder=None):
        decode_times[name] = []

        def run() -> None:
            spent = 0.0
            for event in denoise(models.pipe, req):
                if decoder is not None:
                    start = clock(args)
                    decoder(event.pred_x0)
                    spent += clock(args) - start
            decode_times[name].append(spent)

        return run

    variants = {"no preview": consume("no preview")}
    comparisons = []
    for name, label, target in DECODERS:
        decoder = make_preview_decoder(name, models.pipe, taesd=models.taesd)
        variants[f"{label} preview"] = consume(f"{label} preview", decoder)
        comparisons.append(Comparison(f"{label} / none", f"{label} preview", "no preview", target))
    times = interleave({name: timed(fn, args) for name, fn in variants.items()}, args.repeats)
    comparisons = report(f"preview every step vs none, whole run ({req.steps} steps)", times, comparisons)

    print("  decoder calls timed inside the same runs:")
    for c in comparisons:
        totals, decoding = times[c.numerator], decode_times[c.numerator][1:]  # [1:]: skip the warm-up
        in_run = statistics.median(t / (t - d) for t, d in zip(totals, decoding))
        per_call = statistics.median(decoding) / req.steps
        c.note = f"in-run {in_run:.3f}"
        print(f"  {c.numerator:<26} {per_call * 1000:8.1f} ms per call   in-run ratio {in_run:.3f}")
    return comparisons


def main(argv: list[str] | None = None) -> list[Comparison]:
    return run_one(run, __doc__, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
