"""PAG's cost against CFG (issue 22): a whole run in mode "pag" (eps_u, eps_c and the perturbed eps_c: three
UNet passes per step, the perturbed one its own denoiser call) over the same run in mode "cfg" (two passes, one
call). About 1.5 where the UNet dominates; target at most 1.6. SEG and autoguidance (also a third pass, through
diffusers' hooks on the mid block) are reported beside it.

    python -m bench.bench_pag [--device cuda --full-size]
"""

from __future__ import annotations

import sys

from pipeline import denoise

from .common import BenchModels, Comparison, interleave, report, request, run_one, timed


def run(models: BenchModels, args) -> list[Comparison]:
    def whole_run(req):
        return timed(lambda: list(denoise(models.pipe, req)), args)

    variants = {
        "cfg": whole_run(request(args, mode="cfg")),
        "pag": whole_run(request(args, mode="pag")),
        "seg": whole_run(request(args, mode="seg")),
        "autoguidance": whole_run(request(args, mode="autoguidance")),
    }
    times = interleave(variants, args.repeats)
    return report(
        f"perturbed-model guidance vs CFG, whole run of {args.steps} steps at 7.5",
        times,
        [Comparison("pag / cfg", "pag", "cfg", 1.6, "three passes for two"),
         Comparison("seg / cfg", "seg", "cfg", None, "its first step runs two passes, as diffusers' guider"),
         Comparison("autoguidance / cfg", "autoguidance", "cfg", None, "the weak model skips the mid block")],
    )


def main(argv: list[str] | None = None) -> list[Comparison]:
    return run_one(run, __doc__, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
