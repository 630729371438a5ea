"""Running on the GPUs people have: memory modes, micro-batched UNet calls, and out-of-memory errors that teach.

- Memory modes (`--memory`): `high` keeps every model on the device; `offload` is diffusers'
  `enable_model_cpu_offload` (one whole model on the GPU at a time, as ComfyUI does); `sequential` is its
  `enable_sequential_cpu_offload` (one layer at a time: least memory, slowest; A1111's `--lowvram`). `auto`
  picks one from the free memory torch reports before the weights are loaded.
- Micro-batches: a step's UNet batch (passes x seeds) runs in chunks that fit the free memory, measured on
  the first call. Every row of a UNet batch is independent (GroupNorm and attention act per image), and
  each image keeps its own generator, so chunking changes no result beyond float rounding.
"""

from __future__ import annotations

import gc
import logging
import os
import traceback
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

MEMORY_MODES = ("auto", "high", "offload", "sequential")
CHUNK_ENV = "CFG_EXPLORER_UNET_CHUNK"  # force the UNet micro-batch size (rows per call), e.g. for tests
GiB = 1024**3
# What `auto` keeps free beyond the weights for a step's activations and the VAE decode. An estimate, not a
# measurement: SDXL's UNet at 1024 px needs roughly 1-1.5 GB of activations per image-pass in fp16 (two
# passes per seed under CFG), and micro-batches take care of larger batches once a step has been measured.
ACTIVATION_HEADROOM = 3 * GiB
FREE_FRACTION = 0.9  # of the measured free memory a chunk may plan to use: the allocator fragments


@dataclass(frozen=True, slots=True)
class MemoryChoice:
    """The memory mode in use and why, for the log and the page."""

    mode: str  # high, offload or sequential
    reason: str

    def describe(self) -> str:
        return f"memory mode: {self.mode} ({self.reason})"


def check_memory_mode(memory: str) -> None:
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory: must be one of {', '.join(MEMORY_MODES)}, got {memory!r}")


def free_memory(device: str | torch.device) -> int | None:
    """Free bytes on a CUDA device as the driver reports them; None where torch reports none (CPU, MPS)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def weight_bytes(pipe, dtype: torch.dtype) -> tuple[int, int]:
    """(all models' weights, the largest model's weights) in bytes, were they stored in `dtype`."""
    size = torch.tensor([], dtype=dtype).element_size()
    per_model = [
        sum(p.numel() for p in module.parameters()) * size
        for module in pipe.components.values()
        if isinstance(module, torch.nn.Module)
    ]
    return sum(per_model), max(per_model, default=0)


def choose_memory_mode(memory: str, device: str, free: int | None, weights: int, largest: int) -> MemoryChoice:
    """Which memory mode to run in. `auto`: everything on the GPU if the weights and a step's activations
    fit in the free memory; else one model at a time if the largest one does; else one layer at a time."""
    check_memory_mode(memory)
    if memory != "auto":
        return MemoryChoice(memory, "asked for with --memory")
    kind = torch.device(device).type
    if kind == "cpu":
        return MemoryChoice("high", "on CPU the weights already live in system memory; offloading helps only a GPU")
    if kind == "mps":
        return MemoryChoice("high", "Apple GPUs share system memory with the CPU, and torch reports no free GPU "
                                    "memory to choose by; try --memory offload if macOS starts swapping")
    if free is None:
        return MemoryChoice("high", f"torch reports no free memory on {device}")
    have = f"{free / GiB:.1f} GB free"
    if free >= weights + ACTIVATION_HEADROOM:
        return MemoryChoice("high", f"{have}, enough for all {weights / GiB:.1f} GB of weights and a step")
    if free >= largest + ACTIVATION_HEADROOM:
        return MemoryChoice("offload", f"{have}: too little for all {weights / GiB:.1f} GB of weights at once, "
                                       f"enough for the largest model ({largest / GiB:.1f} GB) and a step")
    return MemoryChoice("sequential", f"{have}: too little for the largest model ({largest / GiB:.1f} GB) and a "
                                      "step, so the weights stream in layer by layer (slow)")


def apply_memory_mode(pipe, mode: str, device: str) -> None:
    """Put the pipeline's models where `mode` says. The pipeline must still be on the CPU for the offload modes.

    Final images decode through the VAE's own slicing (one image at a time, diffusers' `enable_slicing`) in
    every mode, since a batch of 1024 px images peaks at several GB in the decoder; the offload modes also
    tile (`enable_tiling`), which only changes images larger than the VAE's tile (1024 px for SDXL).
    """
    if mode == "high":
        pipe.to(device)
    elif mode == "offload":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        raise ValueError(f"memory: must be high, offload or sequential once chosen, got {mode!r}")
    vae = pipe.vae
    if hasattr(vae, "enable_slicing"):  # the toy world's linear VAE needs neither
        vae.enable_slicing()
    if mode != "high" and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()


def forced_chunk() -> int | None:
    """The UNet micro-batch size forced through `CFG_EXPLORER_UNET_CHUNK`, if set."""
    value = os.environ.get(CHUNK_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{CHUNK_ENV}: must be a whole number of UNet rows, 1 or more, got {value!r}")
    return int(value)


class MicroBatcher:
    """Runs a row-independent model call over a batch in chunks that fit the device's free memory.

    CUDA only (elsewhere torch reports no free memory, so batches run whole unless a size is forced). The
    first call runs the whole batch and measures its activations (peak minus what stays allocated after the
    call, which leaves out weights an offload hook moved in); if it runs out of memory, it frees the cache and
    measures one row instead. Later calls plan `chunk = free / bytes per row`.
    """

    def __init__(self, device: str | torch.device, forced: int | None = None) -> None:
        self.device = torch.device(device)
        self.forced = forced if forced is not None else forced_chunk()
        self.bytes_per_row: float | None = None

    @property
    def measuring(self) -> bool:
        return self.forced is None and self.device.type == "cuda" and torch.cuda.is_available()

    def _available(self) -> int:
        """Free driver memory plus what torch's caching allocator holds but does not use, within the cap
        `torch.cuda.set_per_process_memory_fraction` sets (the driver does not know of it)."""
        free, total = torch.cuda.mem_get_info(self.device)
        allocated = torch.cuda.memory_allocated(self.device)
        available = free + torch.cuda.memory_reserved(self.device) - allocated
        cap = torch.cuda.get_per_process_memory_fraction(self.device) * total - allocated
        return int(max(0, min(available, cap)))

    def chunk_size(self, rows: int) -> int:
        if self.forced is not None:
            return min(rows, self.forced)
        if not self.measuring or self.bytes_per_row is None:
            return rows
        return max(1, min(rows, int(FREE_FRACTION * self._available() // self.bytes_per_row)))

    def _measured(self, fn: Callable[[slice], Tensor], rows: slice) -> Tensor:
        torch.cuda.reset_peak_memory_stats(self.device)
        out = fn(rows)
        peak, after = torch.cuda.max_memory_allocated(self.device), torch.cuda.memory_allocated(self.device)
        per_row = max(peak - after, 1) / (rows.stop - rows.start)
        self.bytes_per_row = max(self.bytes_per_row or 0.0, per_row)
        return out

    def __call__(self, fn: Callable[[slice], Tensor], rows: int) -> tuple[Tensor, int]:
        """`fn` over rows [0, rows), as `fn(slice)` calls whose outputs are concatenated; and how many calls."""
        outs, start = [], 0
        if self.measuring and self.bytes_per_row is None:
            try:
                return self._measured(fn, slice(0, rows)), 1
            except torch.cuda.OutOfMemoryError as exc:
                if rows == 1:
                    raise
                traceback.clear_frames(exc.__traceback__)  # drop the failed call's activations
            free_cache()  # outside the handler, where the exception no longer holds them
            logger.info("UNet batch of %d did not fit; measuring one row to split it", rows)
            outs, start = [self._measured(fn, slice(0, 1))], 1
        while start < rows:
            size = self.chunk_size(rows - start)
            outs.append(fn(slice(start, start + size)))
            start += size
        return (outs[0] if len(outs) == 1 else torch.cat(outs)), len(outs)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's out-of-memory error, or MPS's (a plain RuntimeError that says so)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "MPS backend out of memory" in str(exc)


def free_cache() -> None:
    """Hand cached, unused GPU memory back after a failed run, so the next, smaller one can have it."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()


def out_of_memory_message(memory: str | None = None) -> str:
    """What to do about an out-of-memory error: what to lower, then the memory flag to try."""
    flags = {  # by the mode in use; unknown (None) reads as high
        "high": "restart with `--memory offload` (one model on the GPU at a time), or `--memory sequential` "
                "(least memory, slowest)",
        "offload": "restart with `--memory sequential` (least memory, slowest)",
        "sequential": "this app already runs with `--memory sequential`, its lowest-memory mode; close other "
                      "programs using the GPU",
    }
    return (
        "Out of GPU memory: the run was stopped and the memory freed. Try fewer seeds (Number of seeds), a "
        "smaller Width and Height, or a cheaper Preview decoder (linear); guidance modes with more UNet passes "
        f"(Perp-Neg, weighted prompts) also cost more. Or {flags.get(memory, flags['high'])}."
    )
