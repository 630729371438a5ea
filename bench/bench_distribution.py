"""The distribution lab's cost: many seeds at several scales, against a bare loop over the same work (issue 19).

Toy world (default): `pipeline.distribution.measure` on 512 seeds x 7 scales at 128 px, 30 Euler steps, CFG,
the exact statistics and 64 thumbnails per scale included, against the floor: a bare batched loop over the
same exact denoiser and scheduler (the same (scale, seed) rows in batches of the lab's size, one UNet call per
step, no per-request lanes, no statistics, no thumbnails). Target: lab / floor <= 1.3. Reported beside it: the
floor as one batch of every row (on a CPU, a smaller batch is faster per row: its tensors stay in cache). The
script checks that floor and lab land every seed on the same item.

`--device cuda --full-size`: SDXL's real configs with random weights at 1024 px; reports the lab's seeds per
second (seed x scale images per second) next to `denoise()` of one 16-seed request at the same settings.

    python -m bench.bench_distribution [--repeats 3] [--lab-seeds 512]
    python -m bench.bench_distribution --device cuda --full-size [--lab-seeds 16 --steps 20]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from pipeline import GenerationRequest, denoise, toy_pipeline
from pipeline.conditioning import encode
from pipeline.distribution import _batch_images, measure
from pipeline.loop import _timesteps, make_generators
from pipeline.models.toy import ITEMS, nearest_items

from .common import BenchModels, Comparison, build_models, finish_args, interleave, load_warning, parser, report, timed

TOY_SCALES = (1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0)
FULL_SIZE_SCALES = (1.0, 7.5)


def bare_loop(pipe, request: GenerationRequest, rows: list[tuple[float, int]]) -> torch.Tensor:
    """The floor: the given (scale, seed) rows as one batch, one UNet call per step, CFG by hand, a generator per
    seed. Rows at scale 1 take the conditional pass alone, as the lab's loop does. Final latents, (rows, ...)."""
    scheduler, timesteps = _timesteps(pipe, request)
    f = pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, request.height // f, request.width // f)
    generators = make_generators(tuple(seed for _, seed in rows))
    latents = torch.stack([torch.randn(shape, generator=g) for g in generators]) * scheduler.init_noise_sigma
    cond = encode(pipe, request.prompt, request.prompt_2).prompt_embeds  # (1, 77, C)
    s = torch.tensor([scale for scale, _ in rows], dtype=latents.dtype)[:, None, None, None]
    guided = (s != 1).flatten()
    n_guided = int(guided.sum())
    embeds = torch.cat([torch.zeros_like(cond).expand(n_guided, -1, -1), cond.expand(len(s), -1, -1)])
    for t in timesteps:
        x = scheduler.scale_model_input(latents, t)
        eps = pipe.unet(torch.cat([x[guided], x]), t, encoder_hidden_states=embeds, return_dict=False)[0]
        uncond, eps = eps[:n_guided], eps[n_guided:].clone()
        eps[guided] = uncond + s[guided] * (eps[guided] - uncond)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents


def bare_loops(pipe, request: GenerationRequest, scales, seeds: range, size: int) -> torch.Tensor:
    """`bare_loop` over every (scale, seed), in batches of `size` images, in the lab's order."""
    rows = [(scale, seed) for scale in scales for seed in seeds]
    return torch.cat([bare_loop(pipe, request, rows[i : i + size]) for i in range(0, len(rows), size)])


def toy(args) -> list[Comparison]:
    pipe = toy_pipeline()
    n = args.lab_seeds
    request = GenerationRequest(prompt="blue square", mode="cfg", steps=30, width=128, height=128, scheduler="euler")
    seeds, size = range(n), _batch_images(pipe, request)
    print(f"the lab's batches: {size} images (results stream as each batch finishes)")

    def lab() -> None:
        for _ in measure(pipe, request, TOY_SCALES, n):
            pass

    def floor(batch: int):
        return lambda: nearest_items(pipe, bare_loops(pipe, request, TOY_SCALES, seeds, batch))

    start = time.perf_counter()
    results = list(measure(pipe, request, TOY_SCALES, n))
    print(f"first lab run (wall) {time.perf_counter() - start:.2f} s; per result: "
          + ", ".join(f"s={r.scale:g} {r.seconds:.2f} s" for r in results))
    floor_latents = bare_loops(pipe, request, TOY_SCALES, seeds, size).view(len(TOY_SCALES), n, 4, 16, 16)
    same = all((nearest_counts(pipe, floor_latents[k]) == r.exact.counts).all() for k, r in enumerate(results))
    print(f"floor and lab land on the same items at every scale: {same}")
    variants = {"lab measure()": timed(lab, args), "bare loop, same batches": timed(floor(size), args),
                "bare loop, one batch": timed(floor(n * len(TOY_SCALES)), args)}
    times = interleave(variants, args.repeats)
    return report(
        f"distribution lab on the toy: {n} seeds x {len(TOY_SCALES)} scales, 128 px, 30 euler steps "
        f"({args.clock} clock)",
        times,
        [Comparison("lab / bare loop (same batches)", "lab measure()", "bare loop, same batches", 1.3, "required"),
         Comparison("lab / bare loop (one batch)", "lab measure()", "bare loop, one batch", None)],
    )


def nearest_counts(pipe, latents: torch.Tensor) -> np.ndarray:
    index = {item: k for k, item in enumerate(ITEMS)}
    return np.bincount([index[item] for item in nearest_items(pipe, latents)], minlength=len(ITEMS))


def full_size(models: BenchModels, args) -> list[Comparison]:
    pipe, n = models.pipe, args.lab_seeds
    request = GenerationRequest(prompt="a watercolor painting of an otter", mode="cfg", steps=args.steps,
                                width=args.size, height=args.size, scheduler="euler", seeds=tuple(range(16)))
    images = n * len(FULL_SIZE_SCALES)

    def lab() -> None:
        for _ in measure(pipe, request, FULL_SIZE_SCALES, n):
            pass

    def one_request() -> None:  # 16 seeds at 7.5: twice the UNet rows per step of the lab's 1.0 scale
        for _ in denoise(pipe, request):
            pass

    times = interleave({"lab measure()": timed(lab, args), "denoise(16 seeds)": timed(one_request, args)},
                       args.repeats)
    lab_s = sorted(times["lab measure()"])[len(times["lab measure()"]) // 2]
    print(f"\nlab: {n} seeds x {len(FULL_SIZE_SCALES)} scales {FULL_SIZE_SCALES} = {images} images in {lab_s:.1f} s: "
          f"{images / lab_s:.3f} images per second, {n / lab_s:.3f} seeds (all scales) per second")
    return report(f"distribution lab, full-size SDXL configs, {args.size} px, {args.steps} steps", times,
                  [Comparison("lab / denoise(16 seeds)", "lab measure()", "denoise(16 seeds)", None,
                              f"{images} images against 16")])


def main(argv: list[str] | None = None) -> list[Comparison]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--lab-seeds", type=int, default=None, help="seeds per scale (default 512 toy, 16 full-size)")
    args = finish_args(p.parse_args(argv))
    if args.lab_seeds is None:
        args.lab_seeds = 16 if args.full_size else 512
    print(f"torch threads {torch.get_num_threads()}, {args.repeats} timed repeats per variant after 1 warm-up, "
          f"interleaved, {args.clock} clock")
    if not args.device.startswith("cuda") and (warning := load_warning()):
        print(warning)
    if args.full_size:
        models = build_models(args.device, full_size=True)
        print(f"models: {models.description}")
        return full_size(models, args)
    return toy(args)


if __name__ == "__main__":
    main(sys.argv[1:])
