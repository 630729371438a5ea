"""Same-shape batching: concurrent runs on one replica share UNet calls.

Each run's thread calls a `BatchingDenoiser` exactly as the loop calls `pipeline.denoiser.Denoiser`
(`(model_input, t, conditioning, variant)`). It hands its rows to the replica's `@serve.batch` method, which
gathers the rows of every call waiting at that moment (`run_batch`), runs the plain `Denoiser` once per group of
rows that can share a UNet call, and gives each caller its own rows back. The UNet is row-independent and takes
one timestep per row, so runs at different steps share a call; each run keeps its own seeds, generators and
guidance (those live in its loop, outside the UNet).

Rows meet only where everything but the row count agrees (`RowsKey`): the latent shape, the variant, dtypes,
devices, the embeddings' widths, and toy-vs-real conditioning (the toy's per-row prompt adherence). Same-shape runs
are routed to one replica by `multiplexed_model_id` (`protocol.RunSpec.shape_key`), so they meet at all.

No ray here: the replica passes its batch method in as `submit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from pipeline.denoiser import Conditioning, Denoiser


class RowsKey(NamedTuple):
    latent: tuple[int, ...]  # (4, H/f, W/f)
    variant: str
    dtype: torch.dtype
    t_dtype: torch.dtype
    device: str
    embeds: tuple[int, ...]  # prompt_embeds' (77, D) and the pooled width
    toy_adherence: bool  # rows that carry the toy's prompt adherence never meet rows that do not


@dataclass
class Rows:
    """One run's UNet call: its rows, their timestep and conditioning."""

    model_input: Tensor
    t: Tensor
    conditioning: Conditioning
    variant: str = ""

    @property
    def key(self) -> RowsKey:
        c = self.conditioning
        return RowsKey(tuple(self.model_input.shape[1:]), self.variant, self.model_input.dtype, self.t.dtype,
                       str(self.model_input.device), (*c.prompt_embeds.shape[1:], c.text_embeds.shape[-1]),
                       c.adherence is not None)

    def __len__(self) -> int:
        return len(self.model_input)


def _cat(items: list[Rows]) -> Rows:
    """The items' rows stacked, the timestep expanded to one per row."""
    conds = [item.conditioning for item in items]
    adherence = None if conds[0].adherence is None else torch.cat([c.adherence for c in conds])
    return Rows(torch.cat([item.model_input for item in items]),
                torch.cat([item.t.reshape(-1).expand(len(item)) for item in items]),
                Conditioning(torch.cat([c.prompt_embeds for c in conds]), torch.cat([c.text_embeds for c in conds]),
                             torch.cat([c.time_ids for c in conds]), adherence),
                items[0].variant)


def run_batch(denoiser: Denoiser, items: list[Rows], lock=None,
              log: Callable[[RowsKey, int, int], None] = lambda key, calls, rows: None) -> list[tuple[Tensor, int, int]]:
    """Each item's prediction, the UNet calls its group took, and how many runs' calls its group joined, in the
    order of `items`: one plain `Denoiser`
    call per group of items with equal keys (its micro-batching still applies). `log(key, calls, rows)` is told
    of each UNet call: the key, how many runs' calls it joined, and its rows."""
    groups: dict[RowsKey, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.key, []).append(index)
    results: list[tuple[Tensor, int, int] | None] = [None] * len(items)
    for key, indices in groups.items():
        joined = _cat([items[i] for i in indices])
        if lock is None:
            noise = denoiser(joined.model_input, joined.t, joined.conditioning, joined.variant)
        else:
            with lock:
                noise = denoiser(joined.model_input, joined.t, joined.conditioning, joined.variant)
        log(key, len(indices), len(joined))
        for i, part in zip(indices, noise.split([len(items[i]) for i in indices])):
            results[i] = (part, denoiser.chunks, len(indices))
    return results


class BatchingDenoiser:
    """The `Denoiser` call of one run on a replica, sent through the replica's batch (`submit`, blocking).
    `shared`: how many runs' calls the last call's UNet call joined (1: it ran alone)."""

    def __init__(self, submit: Callable[[Rows], tuple[Tensor, int, int]], device: torch.device) -> None:
        self.submit, self.device = submit, device
        self.chunks = 0
        self.shared = 1

    def __call__(self, model_input: Tensor, t: Tensor, conditioning: Conditioning, variant: str = "",
                 layout=None) -> Tensor:
        # `layout` is for a local Denoiser's watchers; the loop refuses watchers with a given denoiser
        noise, self.chunks, self.shared = self.submit(Rows(model_input, t, conditioning, variant))
        return noise
