"""What-if at any step: recombine a finished run's cached predictions at a new scale, or fork the run from a step.

A guided step runs the UNet once per prediction (the baseline and the prompt for CFG) and then combines them
with the scale: the combination is cheap, the UNet is not. So a run recorded into a `RunCache` (the caller's
object: the loop keeps nothing) can answer "what would step k have predicted at scale 3?" with no UNet call,
and can continue from step k with new guidance settings without recomputing steps 1..k.

    cache = RunCache(pipe, request)
    for event in cache.consume(generate(pipe, request, record=True)):
        ...
    alt = whatif(cache, step=12, scale=3.0)             # alt.pred_x0: (B, 4, H/f, W/f), no UNet call
    new = dataclasses.replace(cache.settings_at(12), guidance_scale=3.0)
    child = cache.branch(12, new)                       # child.name == "s 7.5 → 3 from step 12"
    for event in child.consume(fork(pipe, cache, 12, new)):
        ...                                             # steps 13..N; fork `child` again to stack forks

A fork's request carries the whole path (`GenerationRequest.forks`): running it from the start gives the
same final latents (within float rounding), and it is what the fork's PNG records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from diffusers import StableDiffusionXLPipeline
from torch import Tensor

from .guidance import COND, GUIDANCE_MODES, Part, guidance_mode
from .loop import Resume, StepEvent, _timesteps, combine, generate, plan_passes
from .request import FORKABLE, NON_SETTINGS, ForkPoint, GenerationRequest, RequestError
from .schedulers import pred_original_sample, step_kwargs

DEFAULT_BUDGET_BYTES = 256 * 2**20  # 30 steps x 4 seeds of CFG at 1024 px in fp16 need 91 MiB (bench/bench_whatif.py)
GENERATOR_STATE_BYTES = 5056  # torch's CPU generator (Mersenne Twister) state


@dataclass(frozen=True, slots=True)
class CachedStep:
    """One recorded step: its predictions by part, what they combined to, and where the run stood after it."""

    step: int  # 1-based
    timestep: float
    scale: float  # the scale the step used (after schedule and interval)
    settings: GenerationRequest  # the request's settings at this step
    predictions: dict[Part, Tensor]  # each (B, 4, H/f, W/f)
    noise_pred: Tensor  # the combined prediction, (B, 4, H/f, W/f)
    pred_x0: Tensor  # (B, 4, H/f, W/f)
    latents: Tensor  # x after the step, (B, 4, H/f, W/f): where a fork starts
    generator_states: tuple[Tensor, ...]  # one per seed, after the step

    @property
    def nbytes(self) -> int:
        tensors = [*self.predictions.values(), self.noise_pred, self.pred_x0, self.latents, *self.generator_states]
        return sum(t.nbytes for t in tensors)


@dataclass(frozen=True, slots=True)
class WhatIf:
    """One step recombined at another scale or mode. Tensors are (B, ...) per seed, in seed order."""

    step: int
    scale: float
    mode: str
    pred_x0: Tensor  # the step's clean-latent estimate under the new settings, (B, 4, H/f, W/f)
    noise_pred: Tensor  # the combined prediction under the new settings, (B, 4, H/f, W/f)
    difference: Tensor  # pred_x0 minus the recorded pred_x0, (B, 4, H/f, W/f)
    difference_norm: Tensor  # ||difference|| per seed, (B,)
    update_norm: Tensor | None  # ||eps_hat - eps_c|| per seed, (B,): what guidance adds to the prompt's prediction
    recorded_update_norm: Tensor | None  # the same at the recorded settings


def _own(tensor: Tensor) -> Tensor:
    """The tensor with storage of its own size: a slice of the UNet's batched output would keep the whole batch."""
    return tensor if tensor.untyped_storage().nbytes() == tensor.nbytes else tensor.clone()


def _x0_coefficients(pipe: StableDiffusionXLPipeline, request: GenerationRequest) -> list[float]:
    """d pred_x0 / d noise_pred at every step, from the scheduler itself.

    For these samplers pred_x0 = a_t x_t + b_t eps (Euler: x - sigma eps; DDIM: (x - sqrt(1 - abar) eps) / sqrt(abar),
    Song et al. 2020 eq. 12), so stepping a copy of the scheduler with x = 0 and eps = 1 gives b_t, and a new
    prediction's x0 is the recorded one plus b_t times the change in eps: exact, and no UNet input is needed.
    """
    scheduler, timesteps = _timesteps(pipe, request)
    one = torch.ones(1, 1, 1, 1, device=timesteps.device)
    extra = step_kwargs(scheduler, [torch.Generator("cpu").manual_seed(0)], request.eta)  # noise x 0: unused
    coefficients = []
    for t in timesteps:
        scheduler.scale_model_input(one, t)  # Euler checks that it ran; the coefficient does not depend on it
        output = scheduler.step(one, t, torch.zeros_like(one), **extra)
        coefficients.append(float(pred_original_sample(scheduler, output).flatten()[0]))
    return coefficients


class RunCache:
    """One run's steps, kept for what-ifs and forks, within `budget_bytes`. The caller owns it and drops it.

    Every step is kept when all fit the budget; otherwise every `stride`-th step (steps stride, 2 stride, ...).
    """

    def __init__(self, pipe: StableDiffusionXLPipeline, request: GenerationRequest,
                 budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        f = pipe.vae_scale_factor
        self.request = request
        self.budget_bytes = budget_bytes
        self.name = "original"
        self.dropped = False
        self.entries: dict[int, CachedStep] = {}
        self._latent_numel = pipe.unet.config.in_channels * (request.height // f) * (request.width // f)
        self._itemsize = torch.empty((), dtype=pipe.unet.dtype).element_size()
        self._coefficients = _x0_coefficients(pipe, request)
        self.stride = self._choose_stride(0, 0)

    def step_bytes(self, step: int) -> int:
        """What keeping 1-based `step` costs: its predictions, the combined one, pred_x0 and latents, per seed;
        pred_x0 is float32 (the schedulers upcast), the rest in the model's dtype."""
        parts = plan_passes(self.request)[step - 1]
        per_seed = self._latent_numel * ((parts + 2) * self._itemsize + 4) + GENERATOR_STATE_BYTES
        return per_seed * len(self.request.seeds)

    def _choose_stride(self, after: int, kept_bytes: int) -> int:
        total = len(self._coefficients)
        if total == 0:  # a run that takes no denoising step (img2img at strength 0): nothing to keep
            return 1
        for stride in range(1, total + 1):
            need = kept_bytes + sum(self.step_bytes(s) for s in range(after + 1, total + 1) if s % stride == 0)
            if need <= self.budget_bytes:
                return stride
        raise ValueError(f"budget_bytes: must be at least {kept_bytes + self.step_bytes(total)} to keep one step of "
                         f"this run, got {self.budget_bytes}")

    @property
    def nbytes(self) -> int:
        """The memory the kept steps hold."""
        return sum(entry.nbytes for entry in self.entries.values())

    @property
    def planned_bytes(self) -> int:
        """The memory the steps it will keep hold once the run is done (at most `budget_bytes`)."""
        first = max(self.entries, default=0)
        return self.nbytes + sum(self.step_bytes(s) for s in range(first + 1, len(self._coefficients) + 1)
                                 if s % self.stride == 0)

    def drop(self) -> None:
        """Let go of every kept step (a server short of memory drops its oldest runs' caches); later what-ifs
        and forks on it say so."""
        self.entries = {}
        self.dropped = True

    @property
    def steps(self) -> list[int]:
        """The kept steps, 1-based."""
        return sorted(self.entries)

    def settings_at(self, step: int) -> GenerationRequest:
        """The settings the run used at 1-based `step`: start a fork's `new_request` from these."""
        return self.request.settings_at(step - 1)

    def add(self, event: StepEvent) -> None:
        """Keep `event`'s step if the stride says so. The event must come from a run with `record=True`."""
        if event.step == 0 or self.dropped:  # step 0: img2img at strength 0, the VAE round trip; nothing to keep
            return
        if event.record is None:
            raise ValueError("event: has no record; run generate(..., record=True) to fill a RunCache")
        if event.step % self.stride:
            return
        record = event.record
        self.entries[event.step] = CachedStep(
            event.step, event.timestep, event.guidance_scale, self.settings_at(event.step),
            {part: _own(p) for part, p in record.predictions.items()}, _own(record.noise_pred), _own(event.pred_x0),
            _own(event.latents), record.generator_states,
        )

    def consume(self, events: Iterator[StepEvent]) -> Iterator[StepEvent]:
        """Pass `events` through, keeping each step."""
        for event in events:
            self.add(event)
            yield event

    def entry(self, step: int) -> CachedStep:
        if self.dropped:
            raise RequestError("step", "this run's cached predictions were dropped to make room for newer runs; "
                                       "run it again")
        if step not in self.entries:
            raise RequestError("step", f"{step} is not cached; cached steps are {self.steps} (every {self.stride}th "
                                       f"fits the {self.budget_bytes:,}-byte budget)")
        return self.entries[step]

    def modes_at(self, step: int) -> list[str]:
        """The modes that `whatif` can recombine step `step` into at its own scale (those whose predictions it
        computed): CFG's two predictions allow CFG, reversed, conditional only and unconditional only, say."""
        entry = self.entry(step)
        scale = entry.scale
        possible = []
        for name in GUIDANCE_MODES:
            try:
                whatif(self, step, scale, name)
            except ValueError:  # a prediction it did not compute, or a setting the mode needs (a negative prompt)
                continue
            possible.append(name)
        return possible

    def branch(self, step: int, new_request: GenerationRequest) -> RunCache:
        """A cache for the fork at `step` with `new_request`'s settings: it shares this one's steps up to `step`
        (no copy), and `fork`'s events fill the rest."""
        self.entry(step)
        child = object.__new__(RunCache)
        child.request = forked_request(self, step, new_request)
        child.budget_bytes, child._latent_numel, child._itemsize = self.budget_bytes, self._latent_numel, self._itemsize
        child._coefficients = self._coefficients  # the same scheduler and timesteps: a fork never changes them
        child.name = branch_name(self.settings_at(step), child.settings_at(step + 1), step)
        child.dropped = False
        child.entries = {s: e for s, e in self.entries.items() if s <= step}
        child.stride = child._choose_stride(step, child.nbytes)
        return child


def whatif(run_cache: RunCache, step: int, scale: float, mode: str | None = None) -> WhatIf:
    """Step `step` (1-based) of the cached run, recombined at `scale` (and `mode`): no UNet call.

    At the step's own scale and mode it returns the recorded pred_x0.
    """
    entry = run_cache.entry(step)
    settings = dataclasses.replace(entry.settings, guidance_scale=scale, mode=mode or entry.settings.mode)
    mode_entry = guidance_mode(settings.mode)
    needs = mode_entry.parts(scale, mode_entry.params_of(settings), step - 1) if entry.predictions else ()
    missing = [part for part in needs if part not in entry.predictions]
    if missing:
        raise RequestError("mode" if mode else "guidance_scale",
                           f"mode {settings.mode!r} at scale {scale:g} needs the predictions {missing}, which step "
                           f"{step} did not compute (it has {list(entry.predictions)})")
    preds = {part: entry.predictions[part] for part in needs}
    noise_pred = combine(settings, preds, scale, entry.noise_pred, step=step - 1)
    difference = run_cache._coefficients[step - 1] * (noise_pred - entry.noise_pred).to(entry.pred_x0.dtype)
    cond = entry.predictions.get(COND)

    def update(eps: Tensor) -> Tensor | None:
        return None if cond is None else (eps - cond).flatten(1).float().norm(dim=1)

    return WhatIf(step, scale, settings.mode, entry.pred_x0 + difference, noise_pred, difference,
                  difference.flatten(1).float().norm(dim=1), update(noise_pred), update(entry.noise_pred))


def forked_request(run_cache: RunCache, step: int, new_request: GenerationRequest) -> GenerationRequest:
    """The cached run's request with a fork at `step` to `new_request`'s guidance settings.

    `new_request` holds the settings to use from step `step` + 1 on (its own `forks` are not read); it may differ
    from the run only in FORKABLE fields. Fork points after `step` are dropped: they belong to another branch.
    """
    root = dataclasses.replace(run_cache.request, forks=())
    for f in dataclasses.fields(GenerationRequest):
        if f.name in FORKABLE or f.name in NON_SETTINGS or f.name == "forks":
            continue
        if getattr(new_request, f.name) != getattr(root, f.name):
            raise RequestError(f.name, f"a fork keeps the run's {f.name} ({getattr(root, f.name)!r}); only "
                                       f"{', '.join(FORKABLE)} may change")
    changes = tuple(sorted((name, getattr(new_request, name)) for name in FORKABLE
                           if getattr(new_request, name) != getattr(root, name)))
    path = tuple(point for point in run_cache.request.forks if point.step < step) + (ForkPoint(step, changes),)
    return dataclasses.replace(root, forks=path)


_SHORT = {"guidance_scale": "s", "mode": "mode"}


def _short(name: str) -> str:
    return _SHORT.get(name, name)


def _shown(name: str, value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def branch_name(before: GenerationRequest, after: GenerationRequest, step: int,
                title: Callable[[str], str] = _short, shown: Callable[[str, Any], str] = _shown) -> str:
    """What a fork changed, e.g. "s 7.5 → 3 from step 12". `title(field)` and `shown(field, value)` give the words:
    a page passes its controls' labels ("Guidance scale 7.5 → 3", "Standard CFG → Reversed guidance")."""
    changed = [f"{title(name)} {shown(name, getattr(before, name))} → {shown(name, getattr(after, name))}"
               for name in FORKABLE if getattr(before, name) != getattr(after, name)]
    return f"{', '.join(changed) or 'no change'} from step {step}"


def path_name(request: GenerationRequest, title: Callable[[str], str] = _short,
              shown: Callable[[str, Any], str] = _shown) -> str:
    """A fork's whole path, e.g. "s 7.5 → 3 from step 12 ▸ mode cfg → reversed from step 20"; "" without forks.
    `title` and `shown` as in `branch_name`."""
    return " ▸ ".join(branch_name(request.settings_at(p.step - 1), request.settings_at(p.step), p.step, title, shown)
                      for p in request.forks)


def fork(pipe: StableDiffusionXLPipeline, run_cache: RunCache, step: int,
         new_request: GenerationRequest) -> Iterator[StepEvent]:
    """Continue the cached run after `step` (1-based) with `new_request`'s guidance settings: steps step+1..N,
    from the cached latents and generator states, with the same scheduler, seeds and size. Events are recorded
    (`record=True`), so `run_cache.branch(step, new_request).consume(...)` keeps them for a fork of the fork.
    """
    entry = run_cache.entry(step)
    request = forked_request(run_cache, step, new_request)
    resume = Resume(step, entry.latents, entry.generator_states)
    yield from generate(pipe, request, record=True, resume=resume)
