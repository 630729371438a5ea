"""The page's side of the Ray backend: a run streamed from a worker, behind the interface of `ui.streaming.Run`.

`RemoteRun` is a `Run` whose frames come from a worker's stream (`handle.options(stream=True)`) instead of a
thread calling the model here: the page's code (status, previews, step slider, plot, PNGs, Stop) is the same.
Previews arrive as small JPEGs decoded in the replica; the final images as PNG bytes with their settings, which
the page writes to its output folder as they are. `stop()` cancels the streaming response: the worker sees the
cancel and runs no step after the one in flight.

A run that keeps a what-if cache gets each kept step's record too, and the cache lives here, on the page: the
what-if slider recombines it without a worker, and a fork sends its resume state (latents and generator states at
step k, about 1 MB at 1024 px) with the request, so any replica can continue it.
"""

from __future__ import annotations

import collections
import io
import logging
import math
import queue
import threading
import uuid
from typing import Any, Callable, Iterator

from PIL import Image

from pipeline import GenerationRequest, RunCache
from pipeline.sweep import MAX_BATCH, Axis, SweepEvent, batches, grid_image, sweep_cells
from ui.streaming import Frame, History, Run, RunInterrupted

from .protocol import RunSpec, unpack
from .replica_run import resume_state

logger = logging.getLogger("cfg_explorer.serving")

WORKER_LOST = ("**The worker running this run stopped** ({detail}). Its previews so far are kept. Generate again: "
               "another worker takes the next run.")
BUSY = ("**Every worker is busy and the queue is full** ({queued} runs are waiting). Nothing ran: try again in a "
        "minute.")


def _image(data: bytes | None) -> Image.Image | None:
    if data is None:
        return None
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def interruption(exc: BaseException) -> RunInterrupted | None:
    """What the status says for a worker's failure that is no fault of the request; None for any other error."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, BackPressureError):
        queued = exc.args[0] if exc.args else "many"  # num_queued_requests (kept in args across pickling)
        return RunInterrupted(BUSY.format(queued=queued))
    if isinstance(exc, (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError)):
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RunInterrupted(WORKER_LOST.format(detail=f"{type(exc).__name__}: {detail[:160]}"))
    return None


class RemoteRun(Run):
    """One run on a worker; iterate `frames()`, call `stop()` to cancel it (the worker stops within a step)."""

    def __init__(self, handle, spec: RunSpec, cache: RunCache | None = None, history: History | None = None,
                 start: int = 0) -> None:
        request = spec.request
        super().__init__(None, request, None, spec.preview_every, cache=cache, history=history, start=start)
        self.handle, self.spec = handle, spec
        self._response = None

    def stop(self) -> None:
        super().stop()
        if self._response is not None:
            self._response.cancel()

    def _work(self) -> None:
        from ray.serve.exceptions import RequestCancelledError

        try:
            options = self.handle.options(stream=True, multiplexed_model_id=self.spec.shape_key())
            self._response = options.run.remote(self.spec)
            if self._stop.is_set():  # stopped before the stream existed
                self._response.cancel()
            for payload in self._response:
                self._add(payload)
                if self._stop.is_set():
                    break
        except RequestCancelledError:
            pass  # our own Stop
        except BaseException as exc:  # handed to the reader, who re-raises it: never a blank image
            self._error = interruption(exc) or exc
            if not isinstance(self._error, RunInterrupted):
                logger.exception("remote run failed")
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _add(self, payload: dict) -> None:
        """The payload into the history (previews, guidance sizes, the what-if cache) and the newest frame."""
        step, total = payload["step"], payload["total"]
        previews = decomposition = None
        if payload.get("previews") is not None:
            previews = [_image(data) for data in payload["previews"]]
            if payload.get("decomposition") is not None:
                decomposition = [_image(data) for data in payload["decomposition"]]
            self.history.add(step, total, previews, payload["previewed"], decomposition, payload.get("spread", 0.0))
        norms = payload.get("guidance_x0")
        if norms is not None:
            self.history.norms[step] = norms
        cache = self.history.whatif
        if cache is not None and payload.get("record") is not None:
            cache.add(unpack(payload["record"]))
        self._publish(Frame(step, total, payload.get("elapsed", 0.0), previews, norms, payload.get("pngs"),
                            decomposition, payload.get("unet_chunks", 1), self.first_step, payload.get("landed")))


class RemoteRuns:
    """Makes the page's runs on the workers: what `ui.explore.run.RunRoom` asks of a backend, and the Sweep tab's
    `sweep` (`pipeline.sweep.run_sweep`'s events, its batches fanned out over the workers)."""

    def __init__(self, handle, replicas: int = 1) -> None:
        self.handle, self.replicas = handle, replicas
        self.tags: collections.deque[str] = collections.deque(maxlen=64)  # the newest runs' tags (logs, tests)

    def run(self, request: GenerationRequest, preview: str, every: int, source: str, cache: RunCache | None,
            *, fork=None, history: History | None = None, start: int = 0) -> RemoteRun:
        """`fork`: (parent cache, step, forked request): continue the parent's run after `step` on any worker."""
        resume = None
        if fork is not None:
            parent, step, request = fork
            resume = resume_state(parent, step)
        spec = RunSpec(request, preview, every, source, None if cache is None else cache.stride, resume, start,
                       tag=uuid.uuid4().hex)
        self.tags.append(spec.tag)
        return RemoteRun(self.handle, spec, cache, history, start)

    def sweep_batches(self, cells: list) -> list[list]:
        """The same-shape cell groups (`pipeline.sweep.batches`), at most one worker's share each."""
        return batches(cells, max(1, min(MAX_BATCH, math.ceil(len(cells) / self.replicas))))

    def sweep(self, base: GenerationRequest, x: Axis, y: Axis, title: Callable[[str], str] = str,
              shown: Callable[[str, Any], str] | None = None) -> Iterator[SweepEvent]:
        """`pipeline.sweep.run_sweep` on the workers: the same-shape cell groups, cut so that every worker gets a
        share, all stream at once (Serve routes each to the least busy worker; each worker's batch runs as one
        `denoise_batch`). Events come as the batches step and finish; the last carries the grid. Closing this
        generator (the sweep's Stop) cancels every batch still running."""
        cells = sweep_cells(base, x, y)
        groups = self.sweep_batches(cells)
        events: queue.Queue = queue.Queue()
        responses = [self.handle.options(stream=True).cells.remote([c.request for c in group]) for group in groups]

        def pull(group, response) -> None:
            try:
                for payload in response:
                    events.put((group, payload))
            except BaseException as exc:  # the reader raises it (or the status says a worker was lost)
                events.put((group, interruption(exc) or exc))
            events.put((group, None))

        threads = [threading.Thread(target=pull, args=pair, daemon=True) for pair in zip(groups, responses)]
        for thread in threads:
            thread.start()
        images: dict[int, Image.Image] = {}
        running = len(groups)
        try:
            while running:
                group, payload = events.get()
                if payload is None:
                    running -= 1
                    continue
                if isinstance(payload, BaseException):
                    raise payload
                finished = ()
                if "pngs" in payload:
                    finished = tuple((cell, _image(data)) for cell, data in zip(group, payload["pngs"]))
                    images.update((cell.index, image) for cell, image in finished)
                last = len(images) == len(cells)
                grid = grid_image([images[c.index] for c in cells], x, y, title=title, shown=shown) if last else None
                yield SweepEvent(len(images), len(cells), payload["step"], payload["total"], finished, grid)
        finally:
            for response in responses:  # a Stop or a closed tab: no worker computes another step of it
                response.cancel()

