"""Runs a generation in a worker thread, so a slow browser never slows the denoising.

The worker denoises, decodes a preview every N steps, and overwrites one "latest frame" slot. The UI side
reads whatever frame is newest when it is ready for one: frames it was too slow for are skipped, never
queued. Each preview is also kept, small and JPEG-encoded, for the step slider, within a fixed budget.
No gradio here: this is plain threading, testable on its own.
"""

from __future__ import annotations

import io
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from PIL import Image, ImageChops
from torch import Tensor

from pipeline import GenerationRequest, RunCache, generate
from pipeline.decompose import spread
from pipeline.loop import StepEvent
from pipeline.models.toy import Landing, is_toy, landings
from pipeline.previews import PreviewDecoder

from .whatif_render import fork_path

HISTORY_MAX_FRAMES = 480  # images kept for the step slider: ~15 kB each at 256 px, so a few MB per run
HISTORY_SIZE = 256
HISTORY_QUALITY = 80


@dataclass(frozen=True)
class Frame:
    """The state of a run as the UI shows it. `previews` is None on steps that were not previewed."""

    step: int
    total: int
    elapsed: float  # seconds since the run started, model time only
    previews: list[Image.Image] | None = None
    guidance_x0: list[float] | None = None  # the guidance vector's size in x̂₀ per seed (StepEvent.guidance_x0)
    images: list[Image.Image] | None = None  # full-size, on the final frame only
    decomposition: list[Image.Image | None] | None = None  # unconditional, conditional, guided, difference
    unet_chunks: int = 1  # UNet calls the step took: more than 1 where its batch did not fit in memory at once
    start: int = 0  # the step the run started after: a fork from step k runs k+1..N
    landed: list[Landing] | None = None  # toy world, final frame: the data item each seed's x0 is nearest to

    @property
    def steps_per_second(self) -> float:
        return (self.step - self.start) / self.elapsed if self.elapsed > 0 else math.inf


@dataclass
class History:
    """Small JPEG previews by step, for revisiting a finished run; bounded whatever the steps and seeds."""

    every: int = 1  # keep every k-th previewed step so that steps x seeds stays within the budget
    total: int = 0
    seeds: tuple[int, ...] = ()  # the run's own seeds: captions come from here, not from the controls now
    decompose_seed: int | None = None
    mode: str = "cfg"  # the run's guidance mode, to explain the decomposition's missing panels
    finals: list[str] = field(default_factory=list)  # the final PNGs' paths, once the run is done
    off_data: list[bool] = field(default_factory=list)  # toy world: which final images are no data item
    frames: dict[int, list[bytes]] = field(default_factory=dict)
    norms: dict[int, list[float]] = field(default_factory=dict)  # per step: RMS x0(eps_c) - x0(eps_u) per seed
    decompositions: dict[int, list[bytes | None]] = field(default_factory=dict)
    spreads: dict[int, float] = field(default_factory=dict)  # per kept decomposition: how far apart its x̂₀ are
    whatif: RunCache | None = None  # the run's predictions by step, for the what-if panel and forks (ui/whatif.py)
    ending: str = ""  # a finished fork: how its final images compare with its parent's (whatif_render.fork_ending)

    @property
    def name(self) -> str:
        """The branch this is: the run itself, or a fork, named by its path in the page's words
        ("Guidance scale 7.5 → 3 from step 12")."""
        forked = self.whatif is not None and self.whatif.request.forks
        return fork_path(self.whatif.request) if forked else "the run"

    @classmethod
    def for_run(cls, steps: int, seeds: tuple[int, ...], preview_every: int, decompose_seed: int | None = None,
                mode: str = "cfg") -> History:
        previewed = math.ceil(steps / preview_every) * (len(seeds) + 4 * (decompose_seed is not None))
        return cls(every=max(1, math.ceil(previewed / HISTORY_MAX_FRAMES)), total=steps, seeds=tuple(seeds),
                   decompose_seed=decompose_seed, mode=mode)

    @staticmethod
    def _encode(image: Image.Image | None) -> bytes | None:
        if image is None:
            return None
        small = image.copy()
        small.thumbnail((HISTORY_SIZE, HISTORY_SIZE))
        buffer = io.BytesIO()
        small.convert("RGB").save(buffer, format="JPEG", quality=HISTORY_QUALITY)
        return buffer.getvalue()

    @staticmethod
    def _decode(data: bytes | None) -> Image.Image | None:
        return None if data is None else Image.open(io.BytesIO(data))

    def add(self, step: int, total: int, previews: list[Image.Image], index: int,
            decomposition: list[Image.Image | None] | None = None, spread: float = 0.0) -> None:
        """`spread`: how far apart the decomposition's x̂₀ are (`pipeline.decompose.spread`)."""
        self.total = total
        if index % self.every and step != total:
            return
        self.frames[step] = [self._encode(image) for image in previews]
        if decomposition is not None:
            self.decompositions[step] = [self._encode(image) for image in decomposition]
            self.spreads[step] = spread

    def most_different(self) -> int | None:
        """The kept step whose decomposition's parts differ most (the earliest of equals); None without any.
        At the last step the three x̂₀ have converged to one picture: the differences are early."""
        if not self.decompositions:
            return None
        return max(sorted(self.decompositions), key=lambda step: self.spreads.get(step, 0.0))

    def nearest(self, step: int) -> tuple[int, list[Image.Image]] | None:
        if not self.frames:
            return None
        best = min(self.frames, key=lambda s: (abs(s - step), s))
        return best, [self._decode(data) for data in self.frames[best]]

    def decomposition_at(self, step: int) -> list[Image.Image | None] | None:
        stored = self.decompositions.get(step)
        return None if stored is None else [self._decode(data) for data in stored]


class Run:
    """One generation on a worker thread. Iterate `frames()`; call `stop()` to end it within one step."""

    def __init__(
        self,
        pipe,
        request: GenerationRequest,
        decoder: PreviewDecoder,
        preview_every: int = 1,
        source: Callable[[object], Tensor] = lambda event: event.pred_x0,
        cache: RunCache | None = None,
        events: Callable[[], Iterator[StepEvent]] | None = None,
        history: History | None = None,
        start: int = 0,
    ) -> None:
        """`cache`: record the run's predictions into it (for what-ifs and forks), kept in `history.whatif`.
        `events`, `history` and `start`: a fork's own steps (after `start`), continuing a history that already
        holds the steps before it; by default the run is `generate(pipe, request)` from the start."""
        self.pipe, self.request, self.decoder = pipe, request, decoder
        self.preview_every, self.source, self.first_step = max(1, preview_every), source, start
        self.history = history or History.for_run(request.steps, request.seeds, self.preview_every,
                                                  request.decompose_seed, request.mode)
        self.history.whatif = cache
        self._events = events or (lambda: generate(pipe, request, record=cache is not None))
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._version = 0
        self._done = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="cfg-explorer-run", daemon=True)

    def start(self) -> Run:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _publish(self, frame: Frame) -> None:
        with self._cond:
            self._latest = frame
            self._version += 1
            self._cond.notify_all()

    def _work(self) -> None:
        start = time.perf_counter()
        previewed = 0
        try:
            cache = self.history.whatif
            for event in self._events():
                if self._stop.is_set():
                    break
                if cache is not None:
                    cache.add(event)
                previews = decomposition = None
                if event.step % self.preview_every == 0 or event.is_final:
                    previews = self.decoder(self.source(event))
                    decomposition = self._decompose(event)
                    parts = event.decomposition
                    self.history.add(event.step, event.total, previews, previewed, decomposition,
                                     spread(parts) if parts is not None else 0.0)
                    previewed += 1
                norms = None if event.guidance_x0 is None else [float(n) for n in event.guidance_x0]
                if norms is not None:
                    self.history.norms[event.step] = norms
                images = list(event.images) if event.images is not None else None
                landed = landings(self.pipe, event.pred_x0) if images is not None and is_toy(self.pipe) else None
                self._publish(Frame(event.step, event.total, time.perf_counter() - start, previews, norms, images,
                                    decomposition, event.unet_chunks, self.first_step, landed))
        except BaseException as exc:  # handed to the reader, who re-raises it: never a blank image
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _decompose(self, event) -> list[Image.Image | None] | None:
        """The decomposition's three clean-image estimates, decoded, and guided minus unconditional as an
        image (mid-grey where they agree): only on previewed steps, so a run without it costs nothing."""
        parts = event.decomposition
        if parts is None:
            return None
        tensors = [parts.uncond, parts.cond, parts.guided]
        present = [t for t in tensors if t is not None]
        decoded = iter(self.decoder(torch.cat(present)))
        uncond, cond, guided = (next(decoded) if t is not None else None for t in tensors)
        difference = None if uncond is None else ImageChops.subtract(guided, uncond, scale=2.0, offset=128)
        return [uncond, cond, guided, difference]

    def frames(self, poll: float = 0.25) -> Iterator[Frame]:
        """The newest frame each time one is newer than the last seen; ends when the run does.

        Wakes at least every `poll` seconds so the caller can be cancelled between frames. Re-raises the
        worker's exception, if any.
        """
        seen = 0
        while True:
            with self._cond:
                while self._version == seen and not self._done:
                    self._cond.wait(poll)
                    if self._stop.is_set() and self._version == seen:
                        break
                frame, version, done = self._latest, self._version, self._done
            if version != seen and frame is not None:
                seen = version
                yield frame
            elif done or self._stop.is_set():
                break
        self.join(timeout=60)
        if self._error is not None:
            raise self._error


class RunInterrupted(Exception):
    """A run ended early for a reason that is no fault of its settings (a remote worker lost, a full queue): the
    page says it in the status, under where the run stopped, instead of an error badge on every output."""


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def in_background(make_events, stop: threading.Event, tick: float = 1.0) -> Iterator[Any]:
    """Iterate `make_events()` on a worker thread: yield each item as it comes, and None every `tick` seconds
    while none has, so the page can show the run is alive (a real model's scale takes minutes).

    Once `stop` is set nothing more is yielded; the worker ends after the item it is computing and closes the
    iterator (no further UNet call), and this waits for it. The worker's exception is raised here."""
    items: queue.Queue = queue.Queue()

    def work() -> None:
        events = make_events()
        try:
            for item in events:
                items.put(item)
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the reader, who raises it: never a silently empty result
            items.put(_Failure(exc))
        finally:
            events.close()
            items.put(_END)

    worker = threading.Thread(target=work, name="cfg-explorer-lab", daemon=True)
    worker.start()
    try:
        while not stop.is_set():
            try:
                item = items.get(timeout=tick)
            except queue.Empty:
                yield None
                continue
            if isinstance(item, _Failure):
                raise item.error
            if item is _END or stop.is_set():
                break
            yield item
    finally:
        stop.set()  # a Stop, a client's cancel or a closed tab: the worker ends after its current item
        worker.join(timeout=600)
