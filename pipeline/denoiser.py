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
- **Model variants (PAG, Ahn et al. 2024, arXiv 2403.17377).** A mode asks for a pass with
  `Part(source, variant="pag")`. The loop groups rows by variant and calls the denoiser once per group; the
  denoiser enters `VARIANTS[variant](unet)`, a context manager that swaps the attention processors of the
  chosen layers for the perturbed ones (diffusers' `PAGIdentitySelfAttnProcessor2_0`) and restores them after.
  No variant is registered yet: asking for one is refused, never silently run on the plain UNet.
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

# variant name -> context manager factory over the UNet; "" (the plain UNet) is always there. See the docstring.
VARIANTS: dict[str, Callable[[torch.nn.Module], ContextManager]] = {"": lambda unet: contextlib.nullcontext()}


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
        """The model's prediction for each row, (B, 4, H/f, W/f), from the scaled model input (B, 4, H/f, W/f).
        `layout` says which rows are what, for the watchers; without it they are not called."""
        if variant not in VARIANTS:
            raise ValueError(f"variant: the denoiser knows {sorted(VARIANTS)}, got {variant!r}")
        watchers = self.watchers if layout is not None else ()

        def rows(r: slice) -> Tensor:
            c = conditioning.rows(r)
            extra = {} if c.adherence is None else {"cross_attention_kwargs": {"prompt_adherence": c.adherence}}
            with contextlib.ExitStack() as stack:
                for watcher in watchers:
                    stack.enter_context(watcher.chunk(r))
                return self.unet(model_input[r], t, encoder_hidden_states=c.prompt_embeds,
                                 added_cond_kwargs={"text_embeds": c.text_embeds, "time_ids": c.time_ids},
                                 return_dict=False, **extra)[0]

        with VARIANTS[variant](self.unet), contextlib.ExitStack() as stack:
            for watcher in watchers:
                stack.enter_context(watcher.watch(self.unet, layout, model_input, t, conditioning))
            noise, self.chunks = self.micro_batches(rows, len(model_input))
        return noise
