"""Same-shape batching: concurrent runs on one replica share UNet calls.

Each run's thread calls a `BatchingDenoiser` exactly as the loop calls `pipeline.denoiser.Denoiser`
(`(model_input, t, conditioning, variant)`). It hands its rows to the replica's `Gatherer`, which holds a round
open until every run of that shape in progress on the replica has submitted its call, then runs the plain
`Denoiser` once per group of rows that can share a UNet call (`run_batch`) and gives each caller its own rows
back. The UNet is row-independent and takes one timestep per row, so runs at different steps share a call; each
run keeps its own seeds, generators and guidance (those live in its loop, outside the UNet).

Rows meet only where everything but the row count agrees (`RowsKey`): the latent shape, the variant, dtypes,
devices, the embeddings' widths, and toy-vs-real conditioning (the toy's per-row prompt adherence). Same-shape runs
are routed to one replica by `multiplexed_model_id` (`protocol.RunSpec.shape_key`), so they meet at all.

No ray here: the replica owns one `Gatherer` (tested without a cluster in tests/unit/test_serving_gatherer.py).
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from dataclasses import dataclass, field
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


FLUSH_ALL, FLUSH_FULL, FLUSH_TIMEOUT, FLUSH_LEFT = "all", "full", "timeout", "left"


@dataclass(eq=False)
class _Call:
    run: object
    rows: Rows
    result: tuple[Tensor, int, int] | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class _Group:
    """The runs of one shape in progress on the replica, and the calls of the round now open."""

    members: set = field(default_factory=set)
    pending: list[_Call] = field(default_factory=list)
    opened: float = 0.0


class Gatherer:
    """Same-shape rounds of UNet calls on one replica: a round closes as soon as every run of its shape that is in
    progress here has submitted (`FLUSH_ALL`), at `max_batch` calls (`FLUSH_FULL`), or `timeout_s` after it opened
    (`FLUSH_TIMEOUT`, a safety net: a run slow to come back, e.g. in its first prompt encoding). A run alone closes
    its round at once. The thread that closes a round runs it (the replica's lock serialises model calls).

    Why not `@serve.batch` (what issue 21 asked for): it closes a batch on `max_batch_size` or on
    `batch_wait_timeout_s`, and knows nothing of which runs are in progress. A run's gap between UNet calls (its
    scheduler step, preview, payload) is longer than a short wait, so with 5 ms 8 runs shared 1.09 runs a call,
    and with 50 ms a lone run took 1.93x as long (bench/README.md). Here a round waits exactly for the runs that
    will come, and for no one when a run is alone.

    A run joins its group when it starts (`join`), so the first rounds of runs started together already meet; it
    leaves at its last step (`BatchingDenoiser.finishing`: its final decode must not hold the others) or when it
    ends or its caller cancels (`leave`, from any thread: a round that only waited for it closes at once). A run
    that starts with one step left (a fork at N-1) learns it too late and counts until it ends: there the safety
    net bounds the others' wait."""

    def __init__(self, run: Callable[[list[Rows]], list[tuple[Tensor, int, int]]], max_batch: int = 8,
                 timeout_s: float = 0.1, log_size: int = 2000) -> None:
        self._run, self.max_batch, self.timeout_s = run, max_batch, timeout_s
        self._cond = threading.Condition()
        self._groups: dict[str, _Group] = {}
        self._left = weakref.WeakSet()  # runs that left: a call still in flight must not make them members again
        self.flushes: collections.deque = collections.deque(maxlen=log_size)  # (key, calls, why) per round

    def join(self, key: str, run: object) -> None:
        with self._cond:
            self._groups.setdefault(key, _Group()).members.add(run)

    def leave(self, key: str, run: object) -> None:
        with self._cond:
            self._left.add(run)
            group = self._groups.get(key)
            if group is not None:
                group.members.discard(run)
                if not group.members and not group.pending:
                    del self._groups[key]
            self._cond.notify_all()  # a waiting round may now be complete: its callers check

    def active(self, key: str) -> int:
        with self._cond:
            group = self._groups.get(key)
            return 0 if group is None else len(group.members)

    def _why(self, group: _Group, now: float) -> str | None:
        """Why the open round of `group` should close now, or None."""
        if len(group.pending) >= self.max_batch:
            return FLUSH_FULL
        if group.members <= {call.run for call in group.pending}:
            return FLUSH_ALL
        if now - group.opened >= self.timeout_s:
            return FLUSH_TIMEOUT
        return None

    def submit(self, key: str, run: object, rows: Rows, leaving: bool = False) -> tuple[Tensor, int, int]:
        """`rows`' prediction, the UNet calls its group took and how many runs' calls it joined; blocks until its
        round has run. `leaving`: the run's last call (it leaves the group as it submits)."""
        call = _Call(run, rows)
        with self._cond:
            calls = self._enter(key, call, leaving)
        return self._result(call) if calls is None else self._closed(calls, call)

    def _enter(self, key: str, call: _Call, leaving: bool) -> list[_Call] | None:
        """Under the lock: put `call` in its round and wait until the round has run (None) or this thread should
        close it (the round's calls, to run outside the lock)."""
        if call.run in self._left:  # a stopped run's call still in flight: it runs alone at once, holding no round
            self.flushes.append((key, 1, FLUSH_LEFT))  # and waiting for none
            return [call]
        group = self._groups.setdefault(key, _Group())
        if not group.pending:
            group.opened = time.monotonic()
        group.pending.append(call)
        (group.members.discard if leaving else group.members.add)(call.run)
        while not call.done:
            if call not in group.pending:  # another thread closed the round and runs it
                self._cond.wait()
                continue
            why = self._why(group, time.monotonic())
            if why is not None:
                calls, group.pending = group.pending, []
                self.flushes.append((key, len(calls), why))
                return calls
            self._cond.wait(max(0.0, group.opened + self.timeout_s - time.monotonic()))
        return None

    def _closed(self, calls: list[_Call], call: _Call) -> tuple[Tensor, int, int]:
        """This thread closed the round `calls`: it runs it (outside the gatherer's lock), and `call`'s result."""
        self._finish(calls)
        return self._result(call)

    def _finish(self, calls: list[_Call]) -> None:
        try:
            results, error = self._run([c.rows for c in calls]), None
        except BaseException as exc:  # every caller of the round gets the error, not only this one
            results, error = [None] * len(calls), exc
        with self._cond:
            for c, result in zip(calls, results):
                c.result, c.error, c.done = result, error, True
            self._cond.notify_all()

    @staticmethod
    def _result(call: _Call) -> tuple[Tensor, int, int]:
        if call.error is not None:
            raise call.error
        return call.result


class BatchingDenoiser:
    """The `Denoiser` call of one run on a replica, sent through the replica's `Gatherer` under `key` (its shape).
    `shared`: how many runs' calls the last call's UNet call joined (1: it ran alone). `finishing()`: the run's
    next step is its last, so its calls from then on leave the group (nobody waits for its final decode)."""

    def __init__(self, gatherer: Gatherer, key: str, device: torch.device) -> None:
        self.gatherer, self.key, self.device = gatherer, key, device
        self.chunks = 0
        self.shared = 1
        self._leaving = False
        gatherer.join(key, self)

    def finishing(self) -> None:
        self._leaving = True

    def close(self) -> None:
        """The run ended (or its caller left): no round waits for it any more."""
        self.gatherer.leave(self.key, self)

    def __call__(self, model_input: Tensor, t: Tensor, conditioning: Conditioning, variant: str = "",
                 layout=None) -> Tensor:
        # `layout` is for a local Denoiser's watchers; the loop refuses watchers with a given denoiser
        rows = Rows(model_input, t, conditioning, variant)
        noise, self.chunks, self.shared = self.gatherer.submit(self.key, self, rows, leaving=self._leaving)
        return noise
