"""Shared pieces of the benchmarks: command-line flags, the benchmark models, and side-by-side timing.

Every benchmark times two or more variants in the same process, interleaved (A B, B A, A B, ...) after one
warm-up call each, and compares their medians. A ratio measured that way survives a busy or throttled
machine far better than an absolute time, which is why we report ratios, not seconds, against targets.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights from configs: nothing to download
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    AutoencoderTiny,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from pipeline import GenerationRequest  # noqa: E402
from pipeline.models import SDXL_SCHEDULER_CONFIG, tiny_pipeline, tiny_taesd, tiny_tokenizer, tiny_unet  # noqa: E402

PROMPT = "a watercolor painting of an otter"

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, written out so no hub access is needed.
SDXL_UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 micro-conditioning numbers * 256 + 1280 pooled
    use_linear_projection=True,
    layers_per_block=2,
    norm_num_groups=32,
)

# ... vae/config.json
SDXL_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)

# ... text_encoder/config.json (CLIP ViT-L/14) and text_encoder_2/config.json (OpenCLIP ViT-bigG/14)
CLIP_L_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    projection_dim=768,
    hidden_act="quick_gelu",
)
OPENCLIP_BIGG_CONFIG = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    max_position_embeddings=77,
    projection_dim=1280,
    hidden_act="gelu",
)


# ---------------------------------------------------------------------------------------------------------
# Flags and setup


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--full-size",
        action="store_true",
        help="SDXL's real UNet, VAE and text encoder configs (random weights, fp16 on cuda) and a TAESD-sized "
        "tiny autoencoder, so each part costs what the real model costs",
    )
    p.add_argument("--size", type=int, default=None, help="image width = height in px (default 512; 1024 full-size)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per run (default 4; 20 full-size)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per variant, after one warm-up (default 5)")
    p.add_argument("--seeds", type=int, default=1, help="images per run: seeds 1..N, a CPU generator each (default 1)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument(
        "--clock",
        choices=("auto", "wall", "cpu"),
        default="auto",
        help="wall: elapsed time; cpu: this process's CPU time, which a busy machine disturbs less "
        "(auto: cpu on --device cpu, wall on cuda)",
    )
    return p


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill size-dependent defaults, apply the thread count, and check the device."""
    if args.size is None:
        args.size = 1024 if args.full_size else 512
    if args.steps is None:
        args.steps = 20 if args.full_size else 4
    if args.steps < 2:
        raise SystemExit("--steps: must be at least 2 (per-step cost is measured between steps)")
    if args.repeats < 1:
        raise SystemExit("--repeats: must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    if args.clock == "auto":
        args.clock = "wall" if args.device.startswith("cuda") else "cpu"
    if args.clock == "cpu" and args.device.startswith("cuda"):
        raise SystemExit("--clock cpu: measures CPU work only; use wall time on cuda")
    torch.set_num_threads(args.threads)
    return args


def request(args: argparse.Namespace, **overrides) -> GenerationRequest:
    fields = dict(
        prompt=PROMPT,
        mode="cfg",
        guidance_scale=7.5,
        steps=args.steps,
        seeds=tuple(range(1, args.seeds + 1)),
        width=args.size,
        height=args.size,
        scheduler="euler",
    )
    fields.update(overrides)
    return GenerationRequest(**fields)


# ---------------------------------------------------------------------------------------------------------
# Models


@dataclass
class BenchModels:
    pipe: StableDiffusionXLPipeline
    taesd: AutoencoderTiny
    description: str


def build_models(device: str = "cpu", full_size: bool = False, seed: int = 0) -> BenchModels:
    """The pipeline and tiny autoencoder under test, with random weights, on `device`."""
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(seed)
    if full_size:
        # Building on the target device directly: SDXL's UNet alone is 10 GB in fp32.
        with torch.device(device):
            pipe, taesd = _full_size_models()
        description = "full-size SDXL configs (UNet 2.6B, VAE, CLIP-L + bigG), TAESD-sized tiny autoencoder"
    else:
        pipe, taesd = _bench_models()
        description = (
            "small random SDXL: tiny_unet(block_out_channels=(64, 128, 256)), tiny text encoders, tiny_vae, tiny_taesd"
        )
    pipe.to(device)
    taesd.to(device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
        taesd.to(dtype=dtype)
        if pipe.vae.config.force_upcast:
            pipe.vae.to(dtype=torch.float32)  # as load_pipeline does: SDXL's VAE overflows in fp16
    pipe.set_progress_bar_config(disable=True)
    params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    return BenchModels(pipe, taesd, f"{description}; UNet {params:,.1f}M params, {dtype}, {device}")


def _bench_models() -> tuple[StableDiffusionXLPipeline, AutoencoderTiny]:
    """The tiny test pipeline with a wider UNet, so that the UNet, not Python, dominates each step."""
    pipe = tiny_pipeline(seed=0)
    unet = tiny_unet(cross_attention_dim=64, projection_dim=32, block_out_channels=(64, 128, 256)).eval()
    components = {**pipe.components, "unet": unet}
    pipe = StableDiffusionXLPipeline(**components, force_zeros_for_empty_prompt=True, add_watermarker=False)
    return pipe, tiny_taesd(seed=0)


def _full_size_models() -> tuple[StableDiffusionXLPipeline, AutoencoderTiny]:
    tokenizer = tiny_tokenizer()  # any ids below 49,408 are valid; the encoders cost the same
    special = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG, **special)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**OPENCLIP_BIGG_CONFIG, **special)).eval()
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(**SDXL_VAE_CONFIG).eval(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tiny_tokenizer(),
        unet=UNet2DConditionModel(**SDXL_UNET_CONFIG).eval(),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    return pipe, AutoencoderTiny().eval()  # the default config is TAESD's (and taesdxl's) architecture


# ---------------------------------------------------------------------------------------------------------
# Timing


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clock(args: argparse.Namespace) -> float:
    """A timestamp taken after all queued device work has finished: wall time, or this process's CPU time."""
    sync(args.device)
    return time.process_time() if args.clock == "cpu" else time.perf_counter()


def timed(fn: Callable[[], object], args: argparse.Namespace) -> Callable[[], float]:
    """A variant that measures one `fn()` call, device work included."""

    def run() -> float:
        start = clock(args)
        fn()
        return clock(args) - start

    return run


def interleave(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Warm each variant up once, then run them in alternating order (A B, B A, ...) `repeats` times each.

    Each variant returns the quantity it measured, in seconds. Alternating the order cancels a steady drift
    (thermal, other processes) instead of charging it to whichever variant runs last.
    """
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(variants[name]())
    return times


@dataclass
class Comparison:
    label: str
    numerator: str  # variant names
    denominator: str
    target: float | None  # the ratio must be at most this; None: reported only
    note: str = ""
    ratio: float = field(default=float("nan"), init=False)  # ratio of the two medians
    paired: float = field(default=float("nan"), init=False)  # median of the per-round ratios

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "report"
        return "PASS" if self.ratio <= self.target else "FAIL"


def report(
    title: str, times: dict[str, list[float]], comparisons: Sequence[Comparison], unit: str = "s"
) -> list[Comparison]:
    """Print each variant's median (and spread), then each ratio of medians against its target.

    The `paired` column is the median of the per-round ratios (each pair ran back to back): when it and the
    ratio of medians disagree, the machine was too busy for either to be trusted.
    """
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n== {title}")
    width = max(len(name) for name in times)
    for name, values in times.items():
        spread = f"{min(values):.4f}..{max(values):.4f}"
        print(f"  {name:<{width}}  median {medians[name]:9.4f} {unit}   (n={len(values)}, {spread})")
    label_width = max(len(c.label) for c in comparisons)
    print(f"  {'ratio of medians':<{label_width}}  {'value':>7}  {'paired':>7}  {'target':>7}  verdict")
    for c in comparisons:
        c.ratio = medians[c.numerator] / medians[c.denominator]
        c.paired = statistics.median(a / b for a, b in zip(times[c.numerator], times[c.denominator]))
        target = f"<= {c.target:.2f}" if c.target is not None else "-"
        note = f"   {c.note}" if c.note else ""
        print(f"  {c.label:<{label_width}}  {c.ratio:7.3f}  {c.paired:7.3f}  {target:>7}  {c.verdict}{note}")
    return list(comparisons)


def load_warning() -> str | None:
    """A warning when other processes keep the CPU busy, which makes CPU timings unreliable."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cores = os.cpu_count() or 1
    if load < 0.5 * cores:
        return None
    return (
        f"warning: load average {load:.1f} on {cores} cores: other processes compete for the CPU. Wall times are "
        "noisy (with 2+ threads a descheduled worker stalls every op); CPU time (--clock cpu) holds up better, "
        "best with --threads 1."
    )


def describe(args: argparse.Namespace, models: BenchModels) -> None:
    print(f"models: {models.description}")
    print(
        f"run: {args.size}x{args.size} px, {args.steps} steps, {args.seeds} seed(s), euler, guidance 7.5, "
        f"{args.repeats} timed repeats per variant after 1 warm-up, interleaved; "
        f"torch threads {torch.get_num_threads()}, {args.clock} clock"
    )
    if not args.device.startswith("cuda") and (warning := load_warning()):
        print(warning)


def run_one(run: Callable[[BenchModels, argparse.Namespace], list[Comparison]], doc: str,
            argv: list[str] | None = None) -> list[Comparison]:
    """A single benchmark's `main`: parse the shared flags, build the models, describe them, run."""
    args = finish_args(parser(doc.splitlines()[0]).parse_args(argv))
    models = build_models(args.device, args.full_size)
    describe(args, models)
    return run(models, args)
