"""What crosses between the page and a worker: plain Python values and bytes, never tensors on a device.

`RunSpec` goes to the worker; the worker answers with one `dict` per step (`step_payload`), small JPEG previews,
the guidance sizes and, on the last step, the PNG bytes with their settings. A run that keeps its what-if cache
also receives each kept step's record as `torch.save` bytes (`pack` / `unpack`): the cache moves to the page
(about 0.3 MB a step for the toy world's 4 seeds; see the README's "Many users: Ray Serve").

No ray import here: the page and the tests use these without a cluster.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch

from pipeline import GenerationRequest

PREVIEW_QUALITY = 90  # JPEG quality of streamed previews: 512 px frames of ~30 kB


@dataclass(frozen=True)
class RunSpec:
    """One run as the page asks a worker for it."""

    request: GenerationRequest
    preview: str = "linear"  # the `Preview decoder` choice, decoded in the replica
    preview_every: int = 1
    preview_source: str = "pred_x0"  # StepEvent attribute the previews show
    record_every: int | None = None  # send every k-th step's record (the page's RunCache stride); None: none
    resume: bytes | None = None  # a fork: `pack(pipeline.loop.Resume)` at the fork's step (about 1 MB)
    start: int = 0  # a fork from step k streams k+1..N
    tag: str = ""  # names the run in the replica's counters (tests count the steps a stopped run took)

    def shape_key(self) -> str:
        """The routing key of same-shape runs (`multiplexed_model_id`): runs with equal keys can share UNet calls.
        Width, height, scheduler and steps decide the latent shape and the timesteps a replica meets."""
        r = self.request
        return f"{r.width}x{r.height}-{r.scheduler}-{r.steps}"


def pack(value: Any) -> bytes:
    """Tensors (on the CPU) and plain values -> bytes for the wire."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def unpack(data: bytes) -> Any:
    """`pack`'s value back. Only ever applied to our own workers' answers (pickle: never to a stranger's bytes)."""
    return torch.load(io.BytesIO(data), weights_only=False)


def cpu(tree: Any) -> Any:
    """`tree` with every tensor moved to the CPU (a record sent from a GPU replica)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(cpu(v) for v in tree)
    return tree
