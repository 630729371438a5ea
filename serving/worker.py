"""The denoiser worker: a Ray Serve deployment holding the pipeline, one replica per GPU (or per CPU share).

`DenoiserWorker.run(spec)` is an `async def` generator: Serve streams each yielded payload to the caller, and a
caller's cancel (the page's Stop, a closed tab) reaches it as `asyncio.CancelledError` at its next await. (A plain
`def` generator would ignore the cancel and compute every remaining step: measured with Ray 2.60.) The run itself
is a plain generator (`replica_run.payloads`) pulled one step at a time on a worker thread, with
`next(gen, sentinel)` (an exhausted generator pulled without a default would hang the thread pool's future).

Several runs share a replica: their model steps take the replica's `ModelLock`, and their UNet calls go through
the replica's `batching.Gatherer`, which joins the rows of the same-shape runs in progress here into one call as
soon as each of them has submitted (not `@serve.batch`: its fixed wait cannot know which runs will come; see
`Gatherer` and the README's "Same-shape batching" for the numbers).

The model comes from `load_worker_models` (a model name, as app.py loads it) or from `loader`, a callable or an
importable "module:function" path taking the same `(model, device, dtype, memory)` and returning
`(pipe, taesd)`: a model built in code (bench/bench_serve.py's random SDXL, a test's tiny model).

This module imports ray: only `--backend ray` and `serve run` load it. No `from __future__ import annotations`:
Serve reads the annotations of deployment classes at run time.
"""

import asyncio
import collections
import concurrent.futures
import contextlib
import importlib
import logging
import os
import threading
import uuid
from typing import Callable

import torch
from ray import serve

from pipeline.denoiser import Denoiser, execution_device

from .batching import BatchingDenoiser, Gatherer, run_batch
from .protocol import RunSpec
from .replica_run import ModelLock, cell_payloads, payloads

logger = logging.getLogger("cfg_explorer.serving")

APP_NAME = "cfg-explorer"
MAX_ONGOING = 8  # runs one replica interleaves; at least the batch size, or batches never fill (issue 21)
MAX_BATCH = 8
# The most a round of UNet calls waits for a same-shape run that is in progress here but has not submitted (a
# safety net: rounds close when every such run has submitted; a lone run never waits). About one real UNet step.
BATCH_TIMEOUT_S = 0.1
_END = object()


class WorkerLoadError(RuntimeError):
    """A replica could not load its model; the message says which model and why."""


def load_worker_models(model: str, device: str, dtype: str, memory: str):
    """The pipeline and its preview autoencoder as app.py loads them, without the toy fallback: the page chose the
    model already (and fell back there if it had to), so a worker that cannot load it must say so."""
    from app import preview_autoencoder
    from pipeline import ModelLoadError, load_pipeline

    try:
        pipe = load_pipeline(model, device=device, dtype=dtype, memory=memory)
    except (ModelLoadError, ValueError, OSError) as exc:
        raise WorkerLoadError(f"a worker could not load the model {model!r} on {device}: "
                              f"{getattr(exc, 'summary', None) or exc}") from exc
    return pipe, preview_autoencoder(pipe, model)


def resolve_loader(loader: "str | Callable | None") -> Callable:
    """The worker's model loader: `load_worker_models`, a callable, or an importable "module:function" path."""
    if loader is None:
        return load_worker_models
    if callable(loader):
        return loader
    module, sep, name = str(loader).partition(":")
    if not sep or not module or not name:
        raise WorkerLoadError(f"loader: expected 'module:function' or a callable, got {loader!r}")
    return getattr(importlib.import_module(module), name)


@serve.deployment(max_ongoing_requests=MAX_ONGOING, max_queued_requests=64)
class DenoiserWorker:
    def __init__(self, model: str = "toy", device: str = "auto", dtype: str = "auto", memory: str = "auto",
                 threads: int | None = None, batch_size: int = MAX_BATCH, batch_timeout_s: float = BATCH_TIMEOUT_S,
                 loader: "str | Callable | None" = None):
        if threads:  # Ray sets one torch thread for a 1-CPU replica; a CPU replica given more uses them
            torch.set_num_threads(threads)
        self.pipe, self.taesd = resolve_loader(loader)(model, device, dtype, memory)
        self.model_name = model
        self.lock = ModelLock()
        self.lock.install(self.pipe, self.taesd)
        self.device = execution_device(self.pipe)
        self.denoiser = Denoiser(self.pipe)  # the one plain UNet call that batches go through
        # Each run (or sweep batch) pulls its steps on its own thread; the thread that closes a round of UNet calls
        # runs it, so no pool of its own is needed.
        self.run_pool = concurrent.futures.ThreadPoolExecutor(MAX_ONGOING, thread_name_prefix="cfg-run")
        self.steps: dict[str, int] = {}  # run tag -> steps its model ran (tests count a stopped run's steps)
        self.unet_calls: collections.deque = collections.deque(maxlen=2000)  # (key, runs joined, rows) per call
        self.gatherer = Gatherer(lambda items: run_batch(self.denoiser, items, self.lock, self._log),
                                 max_batch=batch_size, timeout_s=batch_timeout_s)
        logger.info("worker ready: %s on %s (pid %d)", model, self.device, os.getpid())

    def _log(self, key, calls: int, rows: int) -> None:
        self.unet_calls.append((key, calls, rows))

    @serve.multiplexed(max_num_models_per_replica=64)
    async def _shape(self, key: str) -> str:
        """Registers a shape key on this replica, so that Serve routes the next runs of that shape here."""
        return key

    def _batching(self, key: str) -> BatchingDenoiser:
        """A run's UNet call, through this replica's gatherer; the run counts as in progress from now on."""
        return BatchingDenoiser(self.gatherer, key, self.device)

    def _counter(self, tag: str):
        tag = tag or uuid.uuid4().hex
        self.steps[tag] = 0

        def counted() -> None:
            self.steps[tag] += 1

        return counted

    async def run(self, spec: RunSpec):
        """Stream the run's payloads (`replica_run.payloads`); a cancel stops it within one step."""
        key = serve.get_multiplexed_model_id()
        if key:
            await self._shape(key)
        stop = threading.Event()
        denoiser = self._batching(key or spec.shape_key())
        gen = payloads(self.pipe, self.taesd, spec, self.lock, stop, self.model_name, denoiser,
                       self._counter(spec.tag))
        try:
            async with contextlib.aclosing(self._pulled(gen, stop)) as pulled:  # closed with this one: on a cancel too
                async for payload in pulled:
                    yield payload
        finally:  # the end, an error or the caller's cancel: no round waits for this run any more
            denoiser.close()

    async def cells(self, requests: list, tag: str = ""):
        """Stream a sweep's batch of same-shape cells (`replica_run.cell_payloads`); a cancel stops it in a step."""
        stop = threading.Event()
        denoiser = self._batching(RunSpec(requests[0]).shape_key())
        gen = cell_payloads(self.pipe, requests, stop, denoiser, self._counter(tag))
        try:
            async with contextlib.aclosing(self._pulled(gen, stop)) as pulled:  # closed with this one: on a cancel too
                async for payload in pulled:
                    yield payload
        finally:
            denoiser.close()

    async def _pulled(self, gen, stop: threading.Event):
        """`gen`'s items, each pulled on a run thread; on the end, an error or the caller's cancel, `stop` is set."""
        pending = None
        try:
            while True:
                pending = self.run_pool.submit(next, gen, _END)
                payload = await asyncio.wrap_future(pending)
                if payload is _END:
                    return
                yield payload
        finally:  # the end, an error, or the caller's cancel: no step after the one in flight
            stop.set()
            if pending is not None:  # close the generator on a pool thread once its step is done
                pending.add_done_callback(lambda _: self.run_pool.submit(gen.close))

    async def info(self) -> dict:
        import ray

        return {"model": self.model_name, "device": str(self.device), "pid": os.getpid(),
                "actor": ray.get_runtime_context().get_actor_name()}

    async def steps_run(self) -> dict[str, int]:
        """Each run's steps so far, by tag (tests count the steps a stopped run took)."""
        return dict(self.steps)

    async def unet_log(self) -> list[tuple]:
        """(rows key, runs joined, rows) per UNet call."""
        return [(tuple(key), calls, rows) for key, calls, rows in self.unet_calls]

    async def rounds(self) -> list[tuple]:
        """(shape key, calls, why it closed: "all", "full" or "timeout") per round of the gatherer."""
        return list(self.gatherer.flushes)


def app_builder(args: dict) -> serve.Application:
    """`serve run serving.worker:app_builder model=toy replicas=2`: the workers alone, on a running cluster; the
    page then joins with `python app.py --backend ray --ray-address auto`."""
    from .cluster import worker_app

    return worker_app(model=args.get("model", "toy"), replicas=int(args.get("replicas", 1)),
                      device=args.get("device", "auto"), dtype=args.get("dtype", "auto"),
                      memory=args.get("memory", "auto"))
