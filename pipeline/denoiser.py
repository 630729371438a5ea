"""The one seam where the model is called: `Denoiser` owns the UNet call for the loop, what-if forks (which
run through the loop) and DDIM inversion.

It takes plain tensors in and gives plain tensors back: the scaled model input (B, 4, H/f, W/f), the timestep,
and the stacked conditioning of those rows (`Conditioning`: text embeddings, pooled embeddings, SDXL's time ids
and, for the toy model, each row's prompt adherence). It owns what every caller otherwise repeated:
- the device (`execution_device`: the one place `pipe._execution_device` is read);
- micro-batching (`pipeline.memory.MicroBatcher`): a batch that would not fit runs in chunks, each row's result
  the same as in one call (the UNet is row-independent);
- the per-row `cross_attention_kwargs` of the toy model (`prompt_adherence`), passed only where a row sets it,
  so a real UNet never sees the argument;
- model variants per pass (`Part.variant`).

Designed for the next two issues:
- **Remote workers (Ray Serve).** A caller needs only `__call__(model_input, t, conditioning, variant)`; the
  arguments are tensors and a string, so a `RemoteDenoiser` with the same call can send them to a Ray Serve
  deployment holding the UNet (and its own `MicroBatcher`), and return the prediction. Nothing else in the
  loop touches the UNet; text encoding and the VAE stay with the caller.
- **Model variants (PAG, Ahn et al. 2024, arXiv 2403.17377; SEG; autoguidance).** A mode asks for a pass with
  `Part(source, variant="pag:mid")`. The loop groups rows by variant and calls the denoiser once per group (its
  own micro-batching, so a variant pass costs one more pass of the batch, no more); the denoiser enters
  `VARIANTS[name](unet, arg)`, a context manager that puts diffusers' hooks on the chosen layers (or, in the toy
  world, blurs the data the exact denoiser knows) and takes them off after. A variant's name is its family and,
  after ":", what the family reads (PAG's layers, SEG's blur sigma). Each mode file registers its family
  (pipeline/guidance/modes/pag.py, seg.py, autoguidance.py). A name not registered is refused, never silently run
  on the plain UNet; a UNet a variant cannot perturb (the toy's has no attention layers) is named by
  `variant_problem` before any model call.
- **Watchers** (`pipeline.attention`'s cross-attention recorder, `pipeline.attribution`'s capture): a caller that
  passes a `Layout` (which rows of the call are which request's prediction, per seed: the loop's own batch
  layout) lets each watcher wrap the call (`watch`, e.g. swap processors and restore them) and each micro-batch
  (`chunk`: which of the call's rows this UNet call holds). A watcher only looks; the prediction is unchanged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Protocol, Sequence

import torch
from torch import Tensor

from .memory import MicroBatcher

# variant family -> context manager factory over the UNet, called as factory(unet) for a bare name and
# factory(unet, arg) for "name:arg"; "" (the plain UNet) is always there. See the docstring.
VARIANTS: dict[str, Callable[..., ContextManager]] = {"": lambda unet: contextlib.nullcontext()}
# variant family -> why a UNet cannot run it (None: it can). A family not listed runs on any UNet.
VARIANT_LIMITS: dict[str, Callable[[torch.nn.Module], str | None]] = {}


def split_variant(variant: str) -> tuple[str, str]:
    """"pag:mid" -> ("pag", "mid"); "seg" -> ("seg", "")."""
    name, _, arg = variant.partition(":")
    return name, arg


def variant_problem(unet: torch.nn.Module, variant: str) -> str | None:
    """Why `unet` cannot run `variant` (unknown, or a model it cannot perturb); None where it can."""
    name, _ = split_variant(variant)
    if name not in VARIANTS:
        return f"the denoiser knows the variants {sorted(VARIANTS)}, not {name!r}"
    limit = VARIANT_LIMITS.get(name)
    return None if limit is None else limit(unet)


def enter_variant(unet: torch.nn.Module, variant: str) -> ContextManager:
    """The context in which `unet` runs as `variant` (refused where `variant_problem` names a problem)."""
    problem = variant_problem(unet, variant)
    if problem:
        raise ValueError(f"variant: {problem}")
    name, arg = split_variant(variant)
    return VARIANTS[name](unet, arg) if arg else VARIANTS[name](unet)


@dataclass(frozen=True, slots=True)
class Conditioning:
    """What the UNet is conditioned on, one row per model-input row, all on the model's device."""

    prompt_embeds: Tensor  # (B, 77, D1 + D2)
    text_embeds: Tensor  # (B, P): text encoder 2's pooled output
    time_ids: Tensor  # (B, 6): SDXL's micro-conditioning
    adherence: Tensor | None = None  # (B,) float64: the toy model's prompt_adherence; None for a real UNet

    def rows(self, r: slice) -> Conditioning:
        return Conditioning(self.prompt_embeds[r], self.text_embeds[r], self.time_ids[r],
                            None if self.adherence is None else self.adherence[r])

    def take(self, index: Tensor) -> Conditioning:
        """The rows at `index` (LongTensor), for a variant's share of a batch."""
        return Conditioning(self.prompt_embeds[index], self.text_embeds[index], self.time_ids[index],
                            None if self.adherence is None else self.adherence[index])


@dataclass(frozen=True, slots=True)
class Block:
    """Rows of one denoiser call that hold one request's prediction `part`, one row per seed, in seed order."""

    lane: int  # which request of the batch (0 for a single run)
    part: Any  # a `pipeline.guidance.Part` (not imported: the guidance package stays below this module)
    seeds: tuple[int, ...]
    start: int  # its first row in the call's batch


@dataclass(frozen=True, slots=True)
class Layout:
    """What each row of one denoiser call is: the loop's step (0-based) and its blocks of rows."""

    step: int
    blocks: tuple[Block, ...]

    def row(self, lane: int, part: Any, seed: int) -> int | None:
        """The row holding `lane`'s prediction `part` for `seed`, or None where this call has none."""
        for block in self.blocks:
            if block.lane == lane and block.part == part and seed in block.seeds:
                return block.start + block.seeds.index(seed)
        return None


class Watcher(Protocol):
    """Looks inside a denoiser call without changing what it returns (see the module docstring)."""

    def watch(self, unet: torch.nn.Module, layout: Layout, model_input: Tensor, t: Tensor,
              conditioning: Conditioning) -> ContextManager: ...

    def chunk(self, rows: slice) -> ContextManager: ...


def execution_device(pipe) -> torch.device:
    """The device the pipeline's models run on: the one place `pipe._execution_device` is read (with model CPU
    offload, diffusers' own property says where the hooks move each model)."""
    return pipe._execution_device


class Denoiser:
    """The UNet call of one run. `chunks` says how many calls the last `__call__` took (more than 1: it did
    not fit at once). `chunk` forces the micro-batch size (rows per call), as `CFG_EXPLORER_UNET_CHUNK` does."""

    def __init__(self, pipe, chunk: int | None = None, watchers: Sequence[Watcher] = ()) -> None:
        self.unet = pipe.unet
        self.watchers = tuple(watchers)
        self.device = execution_device(pipe)
        self.micro_batches = MicroBatcher(self.device, forced=chunk)
        self.chunks = 0

    def __call__(self, model_input: Tensor, t: Tensor, conditioning: Conditioning, variant: str = "",
                 layout: Layout | None = None) -> Tensor:
        """The model's prediction for each row, (B, 4, H/f, W/f), from the scaled model input (B, 4, H/f, W/f) at
        timestep `t`, 0-d or (B,). `layout` says which rows are what, for the watchers; without it they are not
        called."""
        context = enter_variant(self.unet, variant)  # refused before any model call
        watchers = self.watchers if layout is not None else ()

        def rows(r: slice) -> Tensor:
            c = conditioning.rows(r)
            extra = {} if c.adherence is None else {"cross_attention_kwargs": {"prompt_adherence": c.adherence}}
            with contextlib.ExitStack() as stack:
                for watcher in watchers:
                    stack.enter_context(watcher.chunk(r))
                # t is one timestep for every row (0-d), or one per row ((B,): rows of runs at different steps,
                # batched by a Ray Serve replica), sliced with its rows
                return self.unet(model_input[r], t if t.ndim == 0 else t[r], encoder_hidden_states=c.prompt_embeds,
                                 added_cond_kwargs={"text_embeds": c.text_embeds, "time_ids": c.time_ids},
                                 return_dict=False, **extra)[0]

        with context, contextlib.ExitStack() as stack:
            for watcher in watchers:
                stack.enter_context(watcher.watch(self.unet, layout, model_input, t, conditioning))
            noise, self.chunks = self.micro_batches(rows, len(model_input))
        return noise
