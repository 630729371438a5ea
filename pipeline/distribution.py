"""The distribution lab: what guidance does to the distribution of many seeds, measured.

One lab run takes one request (prompt, mode, sampler, steps, size...), a list of guidance scales and N seeds,
and yields one `ScaleResult` per scale (per value of an optional second axis) as it finishes. The same seeds
run at every scale, so the differences between scales are not seed noise.

In the toy world the data distribution is known, so every result is exact against it (`ExactStats`): where
each seed landed among the 96 items, and three targets: the data's p(x | c), the toy model's own
p_a(x | c) (`pipeline.models.toy.item_prior`) and the tilted p_a(x | c)^s p(x)^(1 - s) that "sampling the
sharpened model" would give, which CFG does not sample (Bradley & Nakkiran 2024, arXiv 2408.09000;
Chidambaram et al. 2024, arXiv 2409.13074). On a real model no target exists; it gets diversity proxies.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .loop import _timesteps, denoise_batch
from .models import toy
from .models.toy import is_toy
from .presets import PRESETS_DIR, PresetError, _check_text, _parse_toml, check_keys
from .previews import final_images
from .request import GUIDANCE_SCALE_RANGE, MAX_SEEDS, SEED_RANGE, GenerationRequest, RequestError

ATTRIBUTES: tuple[str, ...] = tuple(toy.VOCABULARY)  # size, colour, shape, vertical, horizontal
AXES: tuple[str, ...] = ("guidance_interval", "guidance_rescale", "prompt_adherence", "mode", "scheduler")
MAX_SCALES = 12
MAX_AXIS_VALUES = 6
TOY_MAX_SEEDS = 1024  # the toy's exact denoiser costs microseconds per seed and step
# A real model: SDXL at 1024 px costs roughly 0.05 s per image and UNet pass in fp16 on an H100-class GPU (an
# estimate, not measured here), so 64 seeds x 12 scales x 30 steps x 2 passes is already ~40 min; more would be
# a batch job, not a lab experiment.
MODEL_MAX_SEEDS = 64
MAX_THUMBNAILS = 64
MODEL_BATCH_IMAGES = 16  # a real model's images per denoise_batch call
TOY_MAX_BATCH_IMAGES = 1024  # results stream as each finishes; and measured (bench_distribution), a bare loop
# over 512 seeds x 7 scales took 0.63 of the CPU time in batches of 1024 images that it took in one batch of 3584
TOY_BATCH_BYTES = 2 * 1024**3  # what one toy batch's float64 step tensors may take
TOY_TENSORS_PER_ROW = 16  # (rows, D) float64 tensors a toy step holds at once, counted generously (2 passes)
NOISE_BAND_DRAWS = 2000
# A sample is a data item when it lies within this fraction of the smallest item-to-item distance of one: 0.054
# at 128 px. The exact denoiser's samples land within ~1e-6 of an item (20 Euler steps); a sample whose last
# step split the posterior between two items lands near half that distance (0.25-0.29 measured), and a blend of
# shapes from very few steps far away (4.0 at s = 15, 2 steps). A tenth leaves both sides a wide margin.
ON_DATA_FRACTION = 0.1
EXACT_START_SALT = 2**40  # the exact start's generator seeds sit apart from every loop seed (at most 2^32 - 1)
THUMBNAIL_SIZE = 96  # px, the longer side


@dataclass(frozen=True)
class LabSettings:
    """What one lab run measures, validated on construction (`RequestError` naming the field and its range).

    `request` gives the prompt, prompt_2, mode, scheduler, eta, steps, size, mode parameters and
    prompt_adherence; its seeds and guidance_scale are ignored (the lab sets them). The seeds are
    first_seed .. first_seed + n_seeds - 1, the same for every scale.
    """

    request: GenerationRequest
    scales: tuple[float, ...]
    n_seeds: int
    first_seed: int = 0
    axis: str | None = None  # one of AXES; one curve per value
    axis_values: tuple = ()
    exact_start: bool = False  # toy only: start from the exact noisy data distribution, not N(0, sigma_max^2)

    def __post_init__(self) -> None:
        if not isinstance(self.request, GenerationRequest):
            raise RequestError("request", f"must be a GenerationRequest, got {type(self.request).__name__}")
        if isinstance(self.scales, list):
            object.__setattr__(self, "scales", tuple(self.scales))
        if isinstance(self.axis_values, list):
            object.__setattr__(self, "axis_values", tuple(_tuple(v) for v in self.axis_values))
        _check_scales(self.scales)
        _check_int("n_seeds", self.n_seeds, 1, TOY_MAX_SEEDS)
        _check_int("first_seed", self.first_seed, SEED_RANGE[0], SEED_RANGE[1] - self.n_seeds + 1)
        if not isinstance(self.exact_start, bool):
            raise RequestError("exact_start", f"must be true or false, got {self.exact_start!r}")
        if self.request.init_latents is not None and self.request.init_latents.shape[0] != 1:
            raise RequestError("init_latents", "the lab's seeds share one start: give a batch of 1, got "
                                               f"{self.request.init_latents.shape[0]}")
        if self.exact_start and (self.request.init_latents is not None or self.request.init_image is not None):
            raise RequestError("exact_start", "the exact start sets the starting latents; the request gives its own "
                                              "start (init_latents or init_image)")
        self._check_axis()

    def _check_axis(self) -> None:
        if self.axis is None:
            if self.axis_values:
                raise RequestError("axis_values", "give an axis to vary, or no values")
            return
        if self.axis not in AXES:
            raise RequestError("axis", f"must be one of {', '.join(AXES)} (or none), got {self.axis!r}")
        if not isinstance(self.axis_values, tuple) or not 1 <= len(self.axis_values) <= MAX_AXIS_VALUES:
            raise RequestError("axis_values", f"must list from 1 to {MAX_AXIS_VALUES} values of {self.axis}, "
                                              f"got {self.axis_values!r}"[:200])
        if len(set(self.axis_values)) != len(self.axis_values):
            raise RequestError("axis_values", f"each value must appear once, got {self.axis_values!r}"[:200])
        self.requests()  # each value's request validates it

    def requests(self) -> list[tuple[Any, GenerationRequest]]:
        """(axis value, the request for that value), one per axis value; (None, request) without an axis.

        Each request has the first seed and the first scale; the lab sets both per batch."""
        base = dataclasses.replace(self.request, seeds=(self.first_seed,), guidance_scale=self.scales[0],
                                   decompose_seed=None)
        if self.axis is None:
            return [(None, base)]
        out = []
        for value in self.axis_values:
            try:
                out.append((value, dataclasses.replace(base, **_axis_fields(self.axis, value, base))))
            except RequestError as error:
                raise RequestError("axis_values", f"{self.axis} value {value!r}: {error.field}: {error.detail}"
                                   [:300]) from None
        return out


def _tuple(value: Any) -> Any:
    """TOML and JSON give lists; a tuple keeps the settings hashable."""
    return tuple(value) if isinstance(value, list) else value


def _check_int(field: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise RequestError(field, f"must be an integer from {lo} to {hi}, got {value!r}"[:200])


def _check_scales(scales: Any) -> None:
    lo, hi = GUIDANCE_SCALE_RANGE
    if not isinstance(scales, tuple) or not 1 <= len(scales) <= MAX_SCALES:
        raise RequestError("scales", f"must list from 1 to {MAX_SCALES} guidance scales, got {scales!r}"[:200])
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not lo <= scale <= hi:
            raise RequestError("scales", f"each must be a number from {lo} to {hi}, got {scale!r}"[:200])
    if len(set(scales)) != len(scales):
        raise RequestError("scales", f"each scale must appear once, got {scales!r}")


def _axis_fields(axis: str, value: Any, base: GenerationRequest) -> dict[str, Any]:
    """The request fields one axis value sets. A scheduler value is a name, or a (name, eta) pair."""
    if axis == "scheduler":
        if isinstance(value, tuple):
            if len(value) != 2:
                raise RequestError("scheduler", f"must be a name or a (name, eta) pair, got {value!r}")
            return {"scheduler": value[0], "eta": value[1]}
        return {"scheduler": value}
    return {axis: value}


@dataclass(frozen=True)
class ExactStats:
    """Toy world only: everything is exact against the known data."""

    counts: np.ndarray  # (96,) int: how many seeds landed nearest each item (toy.ITEMS order)
    distances: np.ndarray  # (n_seeds,) latent distance of each sample (its last clean estimate) to its nearest item
    on_data: np.ndarray  # (n_seeds,) bool: the sample IS a data item (distance below `on_data_bound`)
    targets: dict[str, np.ndarray]  # "data", "model", "tilted": each (96,), sums to 1
    metrics: dict[str, float]  # precision, tv_data, tv_model, tv_tilted, entropy, effective_items,
    # median_distance, off_data, noise_band (and noise_band_data, noise_band_tilted)


@dataclass(frozen=True)
class ScaleResult:
    scale: float
    axis_value: Any | None  # None when LabSettings.axis is None
    done: int  # results finished so far, including this one (for a progress bar)
    total: int  # len(scales) * max(1, len(axis_values))
    n_seeds: int
    thumbnails: tuple[Image.Image, ...]  # up to MAX_THUMBNAILS small final images, seed order, for a mosaic
    exact: ExactStats | None  # toy world; None on real models
    proxies: dict[str, float] | None  # real/tiny models only: pairwise_latent_distance, vendi
    seconds: float  # wall time this result took


def marginal(p: np.ndarray, attribute: str) -> dict[str, float]:
    """A (96,) distribution over toy.ITEMS -> the share of each value of `attribute`, in VOCABULARY order."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute: must be one of {', '.join(ATTRIBUTES)}, got {attribute!r}")
    values = [getattr(item, attribute) for item in toy.ITEMS]
    return {value: float(sum(q for q, v in zip(p, values) if v == value)) for value in toy.VOCABULARY[attribute]}


# --- the exact targets (toy world) ----------------------------------------------------------------------


def prompt_items(request: GenerationRequest) -> np.ndarray:
    """(96,) bool: the items the request's prompt selects, read as the toy UNet reads them (the words of
    Prompt and Prompt 2, united; no known word selects every item)."""
    found = torch.zeros(1, len(toy.WORDS))
    for word in toy.caption_words(request.prompt) + toy.caption_words(request.prompt_2):
        found[0, toy.WORDS.index(word)] = 1.0
    return toy.matching_items(found)[0].numpy()


def targets(allowed: np.ndarray, adherence: float, scale: float) -> dict[str, np.ndarray]:
    """The exact distributions over toy.ITEMS that a learner compares a histogram with, each (96,), summing to 1.

    data: p(x | c), uniform over the prompt's items. model: the toy model's own p_a(x | c) = a p(x | c) +
    (1 - a) p(x) (`toy.item_prior`). tilted: p_a(x | c)^s p(x)^(1 - s), normalised, the distribution that
    "sampling the sharpened model" would give; CFG's sampler does not sample it (Bradley & Nakkiran 2024,
    arXiv 2408.09000; Chidambaram et al. 2024, arXiv 2409.13074). p(x) is uniform over the 96 items.
    """
    mask = torch.as_tensor(allowed)[None]
    data = toy.item_prior(mask, 1.0)[0].numpy()
    model = toy.item_prior(mask, adherence)[0].numpy()
    prior = np.full(len(toy.ITEMS), 1.0 / len(toy.ITEMS))
    with np.errstate(divide="ignore"):
        log_tilted = scale * np.log(model) + (1.0 - scale) * np.log(prior)  # an item of p_a 0 stays 0 for s > 0
    if scale == 0:
        log_tilted = np.log(prior)  # 0 * log 0: p_a^0 = 1 everywhere
    tilted = np.exp(log_tilted - log_tilted.max())
    return {"data": data, "model": model, "tilted": tilted / tilted.sum()}


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


def entropy(p: np.ndarray) -> float:
    """Shannon entropy in nats (0 log 0 = 0)."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@functools.lru_cache(maxsize=256)
def _noise_band(n: int, target: bytes, draws: int, quantile: float) -> float:
    p = np.frombuffer(target, dtype=np.float64)
    rng = np.random.default_rng(0)  # seeded: the band printed next to a result must not change between runs
    counts = rng.multinomial(n, p, size=draws)  # (draws, 96)
    return float(np.quantile(0.5 * np.abs(counts / n - p).sum(axis=1), quantile))


def noise_band(n: int, target: np.ndarray, draws: int = NOISE_BAND_DRAWS, quantile: float = 0.95) -> float:
    """The total variation to `target` that a PERFECT sampler of it stays under with probability `quantile`, at
    n samples: Monte-Carlo over `draws` multinomial histograms. A TV below it is seed noise, not a difference."""
    return _noise_band(n, np.ascontiguousarray(target, dtype=np.float64).tobytes(), draws, quantile)


def on_data_bound(items: Tensor) -> float:
    """The latent distance below which a sample IS a data item: ON_DATA_FRACTION of the smallest distance
    between two items at this size (the nearest pair differ by one small shape's colour)."""
    distances = torch.cdist(items, items)
    distances.fill_diagonal_(math.inf)
    return ON_DATA_FRACTION * float(distances.min())


def exact_stats(pipe, request: GenerationRequest, scale: float, latents: Tensor,
                clean: Tensor | None = None) -> ExactStats:
    """Where each of (n, 4, h, w) final latents landed among the items, against the three exact targets.

    `clean`: the last step's clean estimate (pred_x0), whose distance to the nearest item says whether the
    sample is a data item. Euler's last step lands on it exactly; DDIM as SDXL configures it
    (set_alpha_to_one false) stops at alpha_bar = 0.99915 instead of 1, leaving noise of std 0.029 per latent
    element: invisible, but 0.93 in distance at 128 px, above any bound that tells a fused shape from an item.
    """
    items = pipe.unet.items(*latents.shape[-2:], latents.device)  # (96, D)
    nearest = torch.cdist(latents.flatten(1).to(items), items).argmin(dim=1)  # (n,): as `toy.nearest_items`
    clean = latents if clean is None else clean
    distances = torch.cdist(clean.flatten(1).to(items), items).min(dim=1).values
    n = latents.shape[0]
    counts = np.bincount(nearest.cpu().numpy(), minlength=len(toy.ITEMS))
    allowed = prompt_items(request)
    adherence = pipe.unet.config.prompt_adherence if request.prompt_adherence is None else request.prompt_adherence
    goal = targets(allowed, adherence, scale)
    share = counts / n
    on_data = (distances < on_data_bound(items)).cpu().numpy()
    metrics = {
        "precision": float(share[allowed].sum()),
        **{f"tv_{name}": total_variation(share, p) for name, p in goal.items()},
        "entropy": entropy(share),
        "effective_items": math.exp(entropy(share)),
        "median_distance": float(distances.median()),
        "off_data": float(1.0 - on_data.mean()),
        "noise_band": noise_band(n, goal["model"]),
        "noise_band_data": noise_band(n, goal["data"]),
        "noise_band_tilted": noise_band(n, goal["tilted"]),
    }
    return ExactStats(counts, distances.cpu().numpy(), on_data, goal, metrics)


# --- diversity proxies (real models) ---------------------------------------------------------------------


def vendi(features: Tensor) -> float:
    """The Vendi score (Friedman & Dieng 2022, arXiv 2210.02410): exp of the Shannon entropy of the eigenvalues
    of K / n, K the cosine-similarity kernel of the n rows. 1 when all rows point one way, n when orthogonal."""
    x = features.flatten(1).double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    eigenvalues = torch.linalg.eigvalsh(x @ x.T / x.shape[0]).clamp_min(0)
    eigenvalues = eigenvalues[eigenvalues > 0]
    return float(torch.exp(-(eigenvalues * eigenvalues.log()).sum()))


def proxies(latents: Tensor) -> dict[str, float]:
    """Diversity proxies that need no extra weights, from (n, 4, h, w) final (VAE) latents. MS-SSIM is left
    out: no library in requirements.txt computes it."""
    x = latents.flatten(1).double()
    pairwise = float(torch.pdist(x).mean()) if x.shape[0] > 1 else 0.0
    return {"pairwise_latent_distance": pairwise, "vendi": vendi(x)}


# --- running the seeds -----------------------------------------------------------------------------------


def exact_start_latents(pipe, request: GenerationRequest, seeds: Sequence[int]) -> Tensor:
    """(len(seeds), 4, h, w) starting latents drawn from the exact noisy data distribution at the run's first
    timestep, in the loop's `init_latents` convention (it multiplies them by init_noise_sigma).

    q(x_T | c) = sum_n p_a(n | c) N(sqrt(ab_T) z_n, (1 - ab_T) I): the noised model conditional, which the
    sampler at s = 1 then follows exactly. SDXL's schedule does not reach zero SNR at T (ab_T = 0.0047), so
    its usual start N(0, sigma_max^2) misses the data's remaining signal and biases even s = 1 (Lin et al. 2023,
    arXiv 2305.08891). Each seed draws its item and noise from its own generator, seeded apart from the loop's
    (EXACT_START_SALT), so a seed's start is reproducible and independent of the sampler's own noise.
    """
    scheduler, timesteps = _timesteps(pipe, request)
    f = pipe.vae_scale_factor
    h, w = request.height // f, request.width // f
    items = pipe.unet.items(h, w)  # (96, D), float64
    adherence = pipe.unet.config.prompt_adherence if request.prompt_adherence is None else request.prompt_adherence
    prior = toy.item_prior(torch.as_tensor(prompt_items(request))[None], adherence)[0]
    t = timesteps[:1]
    a = pipe.unet.alpha_bar(t.double().cpu())[0]
    # The model input is the variance-preserving x_t; a sigma-space scheduler (Euler) holds x_t / sqrt(ab).
    to_scheduler = 1.0 / float(scheduler.scale_model_input(torch.ones(1), t)[0])
    out = []
    for seed in seeds:
        g = torch.Generator("cpu").manual_seed(seed + EXACT_START_SALT)
        n = int(torch.multinomial(prior, 1, generator=g))
        noise = torch.randn(items.shape[1], generator=g, dtype=torch.float64)
        out.append((a.sqrt() * items[n] + (1 - a).sqrt() * noise) * to_scheduler)
    latents = torch.stack(out).view(len(seeds), 4, h, w)
    return (latents / float(scheduler.init_noise_sigma)).float()


@dataclass(eq=False)  # jobs are told apart by identity
class _Job:
    """One (axis value, scale): its request and the final latents of its seeds as chunks finish."""

    axis_value: Any
    request: GenerationRequest
    scale: float
    n_seeds: int
    # first seed of a chunk -> its final latents and last clean estimate, (k, 4, h, w) each
    latents: dict[int, tuple[Tensor, Tensor]] = dataclasses.field(default_factory=dict)
    thumbnails: dict[int, list[Image.Image]] = dataclasses.field(default_factory=dict)  # the first seeds' only

    @property
    def finished(self) -> bool:
        return sum(len(v[0]) for v in self.latents.values()) == self.n_seeds


def _batch_images(pipe, request: GenerationRequest) -> int:
    """Images per `denoise_batch` call. The toy's exact denoiser holds a few float64 (rows, D) tensors per
    step, so its batch follows the latent size; a real UNet's is small (MicroBatcher splits it further), and
    a small batch streams results sooner while costing the GPU nothing."""
    if not is_toy(pipe):
        return MODEL_BATCH_IMAGES
    d = 4 * (request.height // pipe.vae_scale_factor) * (request.width // pipe.vae_scale_factor)
    return max(MAX_SEEDS, min(TOY_MAX_BATCH_IMAGES, TOY_BATCH_BYTES // (d * 8 * TOY_TENSORS_PER_ROW)))


def _batches(jobs: list[_Job], seeds: range, size: int) -> list[list[tuple[_Job, tuple[int, ...]]]]:
    """(job, chunk of at most 16 seeds) lanes in (job, seed) order, grouped into batches of at most `size`
    images whose jobs share a sampler (what `denoise_batch` needs): a job finishes as early as it can."""
    chunks = [tuple(seeds[i : i + MAX_SEEDS]) for i in range(0, len(seeds), MAX_SEEDS)]
    batches: list[list[tuple[_Job, tuple[int, ...]]]] = []
    count, key = 0, None
    for job in jobs:
        job_key = (job.request.scheduler, job.request.eta)
        for chunk in chunks:
            if not batches or count + len(chunk) > size or job_key != key:
                batches.append([])
                count, key = 0, job_key
            batches[-1].append((job, chunk))
            count += len(chunk)
    return batches


def _check_for_model(pipe, settings: LabSettings) -> None:
    if is_toy(pipe):
        return
    if settings.n_seeds > MODEL_MAX_SEEDS:
        raise RequestError("n_seeds", f"must be an integer from 1 to {MODEL_MAX_SEEDS} on this model (up to "
                                      f"{TOY_MAX_SEEDS} in the toy world), got {settings.n_seeds}")
    if settings.exact_start:
        raise RequestError("exact_start", "only in the toy world, whose data distribution is known")
    if settings.axis == "prompt_adherence" or settings.request.prompt_adherence is not None:
        raise RequestError("prompt_adherence", "only the toy world's model has it; leave it unset for this model")


def measure(pipe, request: GenerationRequest, scales: Sequence[float], n_seeds: int, *,
            batch_images: int | None = None, **options: Any) -> Iterator[ScaleResult]:
    """Yield one result per (axis value, scale) as it finishes; `options` are LabSettings' other fields
    (first_seed, axis, axis_values, exact_start). The 16-seed limit of a request does not apply here."""
    return run_lab(pipe, LabSettings(request, tuple(scales), n_seeds, **options), batch_images=batch_images)


def run_lab(pipe, settings: LabSettings, *, batch_images: int | None = None) -> Iterator[ScaleResult]:
    """`measure`, from a LabSettings. `batch_images` forces the images per batch (tests; default: by memory).

    Each seed runs with its own generator inside 16-seed requests through `denoise_batch`, so its sample is
    the one `generate` gives for that seed and request. `seconds` is the wall time since the previous result.
    Settings this model cannot run are refused here, before the first result is asked for.
    """
    _check_for_model(pipe, settings)
    return _stream(pipe, settings, batch_images)


def _stream(pipe, settings: LabSettings, batch_images: int | None) -> Iterator[ScaleResult]:
    jobs = [_Job(value, request, float(scale), settings.n_seeds)
            for value, request in settings.requests() for scale in settings.scales]
    seeds = range(settings.first_seed, settings.first_seed + settings.n_seeds)
    # At most one scale's seeds per batch, so each scale's result streams as it finishes rather than all at once;
    # it costs nothing measurable (256 seeds x 3 scales at 128 px: 0.85 s in batches of 256, 0.89 s in one).
    size = batch_images or min(_batch_images(pipe, settings.request), max(MAX_SEEDS, settings.n_seeds))
    done, clock = 0, time.perf_counter()
    for batch in _batches(jobs, seeds, size):
        for (job, chunk), finals in zip(batch, _run_batch(pipe, batch, settings.exact_start)):
            job.latents[chunk[0]] = finals
            wanted = settings.first_seed + MAX_THUMBNAILS - chunk[0]
            if wanted > 0:  # decoded chunk by chunk: 64 SDXL images at 1024 px in one VAE call would not fit
                job.thumbnails[chunk[0]] = _thumbnails(pipe, finals[0][:wanted])
        for job in dict.fromkeys(job for job, _ in batch):
            if job.finished:
                done += 1
                result = _result(pipe, job, done, len(jobs), time.perf_counter() - clock)
                clock = time.perf_counter()
                job.latents.clear()
                job.thumbnails.clear()
                yield result


def _run_batch(pipe, batch: list[tuple[_Job, tuple[int, ...]]], exact_start: bool) -> list[tuple[Tensor, Tensor]]:
    """Each lane's final latents and last clean estimate, (k, 4, h, w) each, from one `denoise_batch` run."""
    requests = []
    for job, chunk in batch:
        start = exact_start_latents(pipe, job.request, chunk) if exact_start else job.request.init_latents
        requests.append(dataclasses.replace(job.request, seeds=chunk, guidance_scale=job.scale, init_latents=start))
    finals = None
    for finals in denoise_batch(pipe, requests):
        pass
    return [(event.latents, event.pred_x0) for event in finals]


def _result(pipe, job: _Job, done: int, total: int, seconds: float) -> ScaleResult:
    chunks = [job.latents[k] for k in sorted(job.latents)]
    latents = torch.cat([c[0] for c in chunks])  # (n, 4, h, w), seed order
    clean = torch.cat([c[1] for c in chunks])
    thumbnails = tuple(image for k in sorted(job.thumbnails) for image in job.thumbnails[k])
    toy_world = is_toy(pipe)
    return ScaleResult(
        scale=job.scale, axis_value=job.axis_value, done=done, total=total, n_seeds=job.n_seeds,
        thumbnails=thumbnails, exact=exact_stats(pipe, job.request, job.scale, latents, clean) if toy_world else None,
        proxies=None if toy_world else proxies(latents), seconds=seconds,
    )


def _thumbnails(pipe, latents: Tensor) -> list[Image.Image]:
    """Final images, decoded by the pipeline's own VAE, downscaled to at most THUMBNAIL_SIZE px."""
    images = final_images(pipe, latents)
    for image in images:
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    return images


def curves(results: Sequence[ScaleResult]) -> dict[str, dict[Any, list[tuple[float, float]]]]:
    """metric -> axis value -> [(scale, value), ...] sorted by scale: the exact metrics (toy) or the proxies."""
    out: dict[str, dict[Any, list[tuple[float, float]]]] = {}
    for result in results:
        values = result.exact.metrics if result.exact is not None else (result.proxies or {})
        for name, value in values.items():
            out.setdefault(name, {}).setdefault(result.axis_value, []).append((result.scale, value))
    for by_value in out.values():
        for points in by_value.values():
            points.sort()
    return out


@dataclass(frozen=True)
class LabPreset:
    """presets/lab/*.toml, loaded and validated like presets/*.toml (an unknown key is an error).

    A file reads:

        name = "Why guidance"
        description = "What the learner will see, measured on these seeds (tests/unit/test_distribution.py)."

        [request]          # GenerationRequest fields (its seeds and guidance_scale are the lab's)
        prompt = "blue square"
        steps = 20

        [lab]              # LabSettings' other fields
        scales = [1, 3, 7.5]
        n_seeds = 256

    The presets are toy-world experiments: their claims are exact there, and they set its prompt_adherence.
    """

    name: str
    description: str  # what the learner will see, MEASURED on its own seeds (tests/unit/test_distribution.py)
    settings: LabSettings
    path: Path | None = None


LAB_PRESETS_DIR = PRESETS_DIR / "lab"
LAB_PRESET_KEYS: tuple[str, ...] = ("name", "description", "request", "lab")
LAB_KEYS: tuple[str, ...] = ("scales", "n_seeds", "first_seed", "axis", "axis_values", "exact_start")


def load_lab_preset(path: str | os.PathLike[str]) -> LabPreset:
    """Read and validate one lab preset; raises `PresetError` naming the file and the field."""
    path = Path(path)
    data = _parse_toml(path)
    check_keys(path, data, LAB_PRESET_KEYS, LAB_PRESET_KEYS, "a lab preset")
    for key in ("request", "lab"):
        if not isinstance(data[key], dict):
            raise PresetError(path, key, f"must be a table ([{key}])")
    check_keys(path, data["lab"], LAB_KEYS, ("scales", "n_seeds"), "[lab]", prefix="lab.")
    try:
        request = GenerationRequest.from_dict(data["request"])
    except RequestError as error:
        raise PresetError(path, f"request.{error.field}", error.detail) from None
    try:
        settings = LabSettings(request, **data["lab"])
    except RequestError as error:
        raise PresetError(path, f"lab.{error.field}", error.detail) from None
    return LabPreset(_check_text(path, data, "name"), _check_text(path, data, "description"), settings, path)


def load_lab_presets(folder: str | os.PathLike[str] = LAB_PRESETS_DIR) -> list[LabPreset]:
    """Every `*.toml` lab preset in `folder`, sorted by file name; one bad file fails the whole load."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"lab preset folder {folder} does not exist")
    presets = [load_lab_preset(path) for path in sorted(folder.glob("*.toml"), key=lambda p: p.name)]
    names = [preset.name for preset in presets]
    for preset in presets:
        if names.count(preset.name) > 1:
            raise PresetError(preset.path, "name", f"{preset.name!r} names more than one lab preset")
    return presets
