"""The denoiser worker: a Ray Serve deployment holding the pipeline, one replica per GPU (or per CPU share).

`DenoiserWorker.run(spec)` is an `async def` generator: Serve streams each yielded payload to the caller, and a
caller's cancel (the page's Stop, a closed tab) reaches it as `asyncio.CancelledError` at its next await. (A plain
`def` generator would ignore the cancel and compute every remaining step: measured with Ray 2.60.) The run itself
is a plain generator (`replica_run.payloads`) pulled one step at a time on a worker thread, with
`next(gen, sentinel)` (an exhausted generator pulled without a default would hang the thread pool's future).

Several runs share a replica: their model steps take the replica's `ModelLock`, and their UNet calls go through
`_unet_rows`, a `@serve.batch` method that joins same-shape rows into one call (`batching`).

This module imports ray: only `--backend ray` and `serve run` load it. No `from __future__ import annotations`:
Serve reads the annotations of deployment classes at run time.
"""

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import threading
import uuid

import torch
from ray import serve

from pipeline.denoiser import Denoiser, execution_device

from .batching import BatchingDenoiser, Rows, run_batch
from .protocol import RunSpec
from .replica_run import ModelLock, cell_payloads, payloads

logger = logging.getLogger("cfg_explorer.serving")

APP_NAME = "cfg-explorer"
MAX_ONGOING = 8  # runs one replica interleaves; at least the batch size, or batches never fill (issue 21)
MAX_BATCH = 8
BATCH_WAIT_S = 0.005  # how long a lone UNet call waits for company: small against a real UNet step (~100 ms)
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


@serve.deployment(max_ongoing_requests=MAX_ONGOING, max_queued_requests=64)
class DenoiserWorker:
    def __init__(self, model: str = "toy", device: str = "auto", dtype: str = "auto", memory: str = "auto",
                 threads: int | None = None, batch_size: int = MAX_BATCH, batch_wait_s: float = BATCH_WAIT_S):
        if threads:  # Ray sets one torch thread for a 1-CPU replica; a CPU replica given more uses them
            torch.set_num_threads(threads)
        self.pipe, self.taesd = load_worker_models(model, device, dtype, memory)
        self.model_name = model
        self.lock = ModelLock()
        self.lock.install(self.pipe, self.taesd)
        self.device = execution_device(self.pipe)
        self.denoiser = Denoiser(self.pipe)  # the one plain UNet call that batches go through
        # Runs pull their steps on their own pool; the batched UNet calls run on another, so runs waiting for a
        # batch can never hold every thread the batch itself needs.
        self.run_pool = concurrent.futures.ThreadPoolExecutor(MAX_ONGOING, thread_name_prefix="cfg-run")
        self.model_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cfg-unet")
        self.steps: dict[str, int] = {}  # run tag -> steps its model ran (tests count a stopped run's steps)
        self.unet_calls: collections.deque = collections.deque(maxlen=2000)  # (key, runs joined, rows) per call
        self.active = 0  # runs and sweep batches streaming now
        self._unet_rows.set_max_batch_size(batch_size)
        self._unet_rows.set_batch_wait_timeout_s(batch_wait_s)
        logger.info("worker ready: %s on %s (pid %d)", model, self.device, os.getpid())

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _unet_rows(self, items: list[Rows]) -> list[tuple[torch.Tensor, int, int]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.model_pool, run_batch, self.denoiser, items, self.lock, self._log)

    def _log(self, key, calls: int, rows: int) -> None:
        self.unet_calls.append((key, calls, rows))

    @serve.multiplexed(max_num_models_per_replica=64)
    async def _shape(self, key: str) -> str:
        """Registers a shape key on this replica, so that Serve routes the next runs of that shape here."""
        return key

    def _batching(self) -> BatchingDenoiser:
        """A run's UNet call, through this replica's batch (from the run's thread onto the replica's event loop,
        where the batch gathers). A run alone on the replica calls the UNet at once: waiting for company that
        cannot come would add `batch_wait_s` to every step."""
        loop = asyncio.get_running_loop()

        def submit(rows: Rows):
            if self.active <= 1:
                return run_batch(self.denoiser, [rows], self.lock, self._log)[0]
            return asyncio.run_coroutine_threadsafe(self._unet_rows(rows), loop).result()

        return BatchingDenoiser(submit, self.device)

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
        gen = payloads(self.pipe, self.taesd, spec, self.lock, stop, self.model_name, self._batching(),
                       self._counter(spec.tag))
        async with contextlib.aclosing(self._pulled(gen, stop)) as pulled:  # closed with this one: on a cancel too
            async for payload in pulled:
                yield payload

    async def cells(self, requests: list, tag: str = ""):
        """Stream a sweep's batch of same-shape cells (`replica_run.cell_payloads`); a cancel stops it in a step."""
        stop = threading.Event()
        gen = cell_payloads(self.pipe, requests, stop, self._batching(), self._counter(tag))
        async with contextlib.aclosing(self._pulled(gen, stop)) as pulled:  # closed with this one: on a cancel too
            async for payload in pulled:
                yield payload

    async def _pulled(self, gen, stop: threading.Event):
        """`gen`'s items, each pulled on a run thread; on the end, an error or the caller's cancel, `stop` is set."""
        pending = None
        self.active += 1
        try:
            while True:
                pending = self.run_pool.submit(next, gen, _END)
                payload = await asyncio.wrap_future(pending)
                if payload is _END:
                    return
                yield payload
        finally:  # the end, an error, or the caller's cancel: no step after the one in flight
            self.active -= 1
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
        return [(tuple(key), calls, rows) for key, calls, rows in self.unet_calls]


def app_builder(args: dict) -> serve.Application:
    """`serve run serving.worker:app_builder model=toy replicas=2`: the workers alone, on a running cluster; the
    page then joins with `python app.py --backend ray --ray-address auto`."""
    from .cluster import worker_app

    return worker_app(model=args.get("model", "toy"), replicas=int(args.get("replicas", 1)),
                      device=args.get("device", "auto"), dtype=args.get("dtype", "auto"),
                      memory=args.get("memory", "auto"))
