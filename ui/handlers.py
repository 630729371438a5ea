"""What every tab shares: the one conversion of library errors into `gr.Error`, the GPU wrapper, job control
(Stop), and `Handlers`, the loaded models and output folder that each tab's behaviour is built on.

Each tab's own behaviour lives in its module (the `explore` package, `sweep_tab`, `invert_tab`...).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import os
import secrets
import tempfile
import threading
import typing
import weakref
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr

from pipeline import GenerationRequest, RunCache
from pipeline.loop import plan_passes
from pipeline.presets import Preset

from .controls import CONTROL_NAMES
from .fields import gr_error  # noqa: F401 - the one conversion lives in fields; tabs and tests import it here too
from .storage import InstanceStorage

logger = logging.getLogger(__name__)

try:  # ZeroGPU Spaces: hold a GPU only while a run executes. Elsewhere `spaces` is absent, or passes calls through.
    import spaces
except ImportError:
    spaces = None

# ZeroGPU's queue favours short reservations, so each handler asks for what its request needs rather than a
# fixed 180 s. SDXL's UNet takes about 0.1 s per image per pass at 1024x1024 in fp16 on the A100/H200-class
# GPUs ZeroGPU lends; the margin covers the text encoders, VAE decodes and the model's move to the GPU.
GPU_SECONDS_PER_MEGAPIXEL_PASS = 0.15
GPU_OVERHEAD_SECONDS = 15
GPU_MAX_SECONDS = 600


def gpu_seconds(unet_image_passes: int, width: int, height: int) -> int:
    """Seconds of GPU to ask ZeroGPU for: UNet passes (summed over steps and images) at a size."""
    megapixels = width * height / 2**20
    return min(GPU_MAX_SECONDS, math.ceil(GPU_OVERHEAD_SECONDS + unet_image_passes * megapixels
                                          * GPU_SECONDS_PER_MEGAPIXEL_PASS))


def request_gpu_seconds(request: GenerationRequest) -> int:
    return gpu_seconds(sum(plan_passes(request)) * len(request.seeds), request.width, request.height)


def gpu(duration: Callable[..., int]):
    """`spaces.GPU(duration=...)` where the `spaces` package is installed; `duration` gets the handler's
    arguments (the decorator's dynamic duration). Outside ZeroGPU the handler runs as it is."""

    def wrap(fn):
        return fn if spaces is None else spaces.GPU(duration=duration)(fn)

    return wrap


def takes_controls(fn):
    """Give a `(*values, **special)` handler one named parameter per control, so API clients see `prompt=`,
    `steps=`... instead of `param_7`. Gradio reads the signature to name and count an endpoint's inputs, and
    injects `gr.Request` only into positional parameters, so keyword-only ones become positional here: the
    inputs after the controls (an image, a state), then the `gr.Request`."""
    hints = typing.get_type_hints(fn)
    extras = [p.name for p in inspect.signature(fn).parameters.values() if p.kind == inspect.Parameter.KEYWORD_ONLY]
    params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in CONTROL_NAMES]
    params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=hints.get(n, inspect.Parameter.empty))
               for n in extras]
    count = len(CONTROL_NAMES)

    def split(args):
        return args[:count], dict(zip(extras, args[count:]))

    if inspect.isgeneratorfunction(fn):  # Gradio streams only from a generator function

        @functools.wraps(fn)
        def wrapper(*args):
            values, special = split(args)
            yield from fn(*values, **special)
    else:

        @functools.wraps(fn)
        def wrapper(*args):
            values, special = split(args)
            return fn(*values, **special)

    wrapper.__signature__ = inspect.Signature(params)
    wrapper.__annotations__ = {n: hints[n] for n in extras if n in hints}
    return wrapper


class Jobs:
    """Running generations and sweeps by run id, so that Stop reaches exactly the job its caller started.

    Each job gets an unguessable id (`secrets.token_urlsafe`), sent as the first update of its stream. Stop
    takes that id: the page passes it from a hidden field, and an API client, with or without a session,
    reads it from its own stream. Knowing someone's session hash no longer stops their run.

    Stop works this way rather than with Gradio's `cancels`, which raced the run's stream: a frame already
    on its way could land after "Stopped" and leave the page looking frozen mid-run. Here the job stops
    within a step and its own stream says where it stopped. A new job in the same session still stops that
    session's previous one: a page runs one job at a time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stops: dict[str, Callable[[], None]] = {}  # run id -> stop
        self._latest: dict[str, str] = {}  # session hash -> its newest run id

    @contextlib.contextmanager
    def running(self, request: gr.Request | None, stop: Callable[[], None]) -> Iterator[str]:
        run_id = secrets.token_urlsafe(16)
        session = getattr(request, "session_hash", None)
        with self._lock:
            self._stops[run_id] = stop
            previous = self._stops.get(self._latest.get(session, "")) if session else None
            if session:
                self._latest[session] = run_id
        if previous is not None:
            previous()
        try:
            yield run_id
        finally:
            with self._lock:
                del self._stops[run_id]
                if session and self._latest.get(session) == run_id:
                    del self._latest[session]

    def stop(self, run_id: str | None) -> bool:
        """Stop the job with this id; False if no such job is running (it ended, or the id is wrong)."""
        with self._lock:
            stop = self._stops.get(run_id or "")
        if stop is not None:
            stop()
        return stop is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._stops)


# What-if caches (pipeline.whatif.RunCache): each run may keep up to WHATIF_RUN_BYTES of its predictions (30 steps
# x 4 seeds of CFG at 1024 px in fp16 take 91 MiB, so all of them; beyond it every k-th step), and the server keeps
# at most WHATIF_TOTAL_BYTES across sessions, dropping the oldest runs' caches first: a crowd of sessions cannot
# fill the (GPU) memory with what-ifs.
WHATIF_RUN_BYTES = 128 * 2**20
WHATIF_TOTAL_BYTES = int(os.environ.get("CFG_EXPLORER_WHATIF_MEMORY_MB", "1024")) * 2**20


class WhatIfStore:
    """The what-if caches of every session, within one total: the newest are kept, the oldest dropped.

    It holds them weakly: a session that runs again or ends lets its old cache go as usual."""

    def __init__(self, total_bytes: int = WHATIF_TOTAL_BYTES, run_bytes: int = WHATIF_RUN_BYTES) -> None:
        self.total_bytes, self.run_bytes = total_bytes, min(run_bytes, total_bytes)
        self._caches: list[tuple[weakref.ref, int]] = []  # oldest first, with the bytes each may hold
        self._lock = threading.Lock()

    def new(self, pipe, request: GenerationRequest) -> RunCache | None:
        """A cache for this run, admitted; None where one step alone is over the per-run budget."""
        try:
            cache = RunCache(pipe, request, self.run_bytes)
        except ValueError:
            logger.info("what-if: one step of this run is over %d bytes; not cached", self.run_bytes)
            return None
        return self.admit(cache)

    def admit(self, cache: RunCache) -> RunCache:
        with self._lock:
            self._caches = [(ref, size) for ref, size in self._caches if ref() is not None]
            self._caches.append((weakref.ref(cache), cache.planned_bytes))
            while sum(size for _, size in self._caches) > self.total_bytes and len(self._caches) > 1:
                ref, _ = self._caches.pop(0)
                old = ref()
                if old is not None:
                    old.drop()
        return cache

    @property
    def nbytes(self) -> int:
        """The memory the admitted caches hold now."""
        with self._lock:
            return sum(cache.nbytes for ref, _ in self._caches if (cache := ref()) is not None)


class Handlers:
    """The loaded models, presets and output folder, shared by every tab; one instance serves every session."""

    def __init__(self, pipe, taesd=None, model_name: str = "", presets: list[Preset] | None = None,
                 output_dir: Path | None = None, storage: InstanceStorage | None = None):
        self.pipe, self.taesd, self.model_name = pipe, taesd, model_name
        self.presets = presets or []
        self.storage = storage  # the instance's own folder (app.py); None in tests that pass an output_dir
        default = storage.outputs_dir if storage else Path(tempfile.gettempdir()) / "cfg-explorer-outputs"
        self.output_dir = Path(output_dir or default)
        self.jobs = Jobs()  # generations and sweeps, for their Stop buttons
        self.whatif = WhatIfStore()  # each run's predictions, for the what-if panel and forks
        # Where Explore's runs and forks execute: None, here (a thread per run); or `serving.frontend.RemoteRuns`,
        # the workers of `--backend ray`
        self.remote = None
