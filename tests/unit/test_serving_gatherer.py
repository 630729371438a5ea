"""The replica's same-shape gatherer (serving/batching.py) without a cluster: a round closes as soon as every run of
its shape in progress has submitted, never waits for a lone run, and a run that leaves (stopped, cancelled, at its
last step) holds no round. And the worker's loader hook (a model built in code). Issue 21."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from pipeline.denoiser import Conditioning
from serving.batching import FLUSH_ALL, FLUSH_TIMEOUT, BatchingDenoiser, Gatherer, Rows

LONG = 30.0  # the safety-net timeout in these tests: a round that waited for it would fail the time checks
QUICK = 2.0  # generous: the rounds below close in milliseconds when nothing waits for a run that will not come


def rows(value: float, n: int = 1) -> Rows:
    cond = Conditioning(torch.zeros(n, 77, 8), torch.zeros(n, 4), torch.zeros(n, 6))
    return Rows(torch.full((n, 4, 2, 2), value), torch.tensor(1.0), cond)


class Model:
    """Stands in for `run_batch`: records each round's inputs, answers each call with its own rows + 1."""

    def __init__(self) -> None:
        self.rounds: list[list[float]] = []

    def __call__(self, items: list[Rows]):
        self.rounds.append(sorted(float(item.model_input[0, 0, 0, 0]) for item in items))
        return [(item.model_input + 1, 1, len(items)) for item in items]


def in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target() -> None:
        start = time.perf_counter()
        out["value"] = fn()
        out["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=target)
    thread.start()
    return thread, out


def test_a_lone_run_never_waits():
    model = Model()
    gatherer = Gatherer(model, timeout_s=LONG)
    run = BatchingDenoiser(gatherer, "a", torch.device("cpu"))
    start = time.perf_counter()
    for step in range(5):
        noise = run(rows(step).model_input, torch.tensor(1.0), rows(step).conditioning)
        assert noise.equal(torch.full((1, 4, 2, 2), step + 1.0)) and run.shared == 1
    assert time.perf_counter() - start < QUICK
    assert [why for _, _, why in gatherer.flushes] == [FLUSH_ALL] * 5


def test_a_round_waits_for_every_run_of_its_shape_in_progress_and_no_other():
    model = Model()
    gatherer = Gatherer(model, timeout_s=LONG)
    a, b = (BatchingDenoiser(gatherer, "shape", torch.device("cpu")) for _ in range(2))
    other = BatchingDenoiser(gatherer, "other shape", torch.device("cpu"))
    first, out = in_thread(lambda: a(rows(1).model_input, torch.tensor(1.0), rows(1).conditioning))
    time.sleep(0.2)
    assert first.is_alive(), "a's call went ahead without b, which is in progress and has not submitted"
    other(rows(7).model_input, torch.tensor(1.0), rows(7).conditioning)  # another shape: alone, at once
    b(rows(2).model_input, torch.tensor(1.0), rows(2).conditioning)
    first.join(QUICK)
    assert out["value"].equal(torch.full((1, 4, 2, 2), 2.0)) and a.shared == b.shared == 2
    assert model.rounds == [[7.0], [1.0, 2.0]]
    assert [(key, n, why) for key, n, why in gatherer.flushes] == [("other shape", 1, FLUSH_ALL),
                                                                    ("shape", 2, FLUSH_ALL)]


def test_a_run_that_leaves_releases_the_round_at_once():
    """A stopped or cancelled run (the replica calls `close()` as its stream ends) and a run past its last step
    (`finishing()`) are no longer waited for."""
    gatherer = Gatherer(Model(), timeout_s=LONG)
    a, stopped = (BatchingDenoiser(gatherer, "shape", torch.device("cpu")) for _ in range(2))
    waiting, out = in_thread(lambda: a(rows(1).model_input, torch.tensor(1.0), rows(1).conditioning))
    time.sleep(0.1)
    stopped.close()
    waiting.join(QUICK)
    assert not waiting.is_alive() and out["seconds"] < QUICK and a.shared == 1
    # a call still in flight from the stopped run (a second model variant in its last step) does not rejoin
    start = time.perf_counter()
    stopped(rows(3).model_input, torch.tensor(1.0), rows(3).conditioning)  # alone, at once: a waits for no one
    assert time.perf_counter() - start < QUICK and gatherer.active("shape") == 1

    finishing = BatchingDenoiser(gatherer, "shape", torch.device("cpu"))
    finishing.finishing()
    together, _ = in_thread(lambda: a(rows(1).model_input, torch.tensor(1.0), rows(1).conditioning))
    finishing(rows(2).model_input, torch.tensor(1.0), rows(2).conditioning)  # its last step's call still meets a
    together.join(QUICK)
    assert finishing.shared == 2 and gatherer.active("shape") == 1  # then it no longer counts, while it decodes
    start = time.perf_counter()
    a(rows(1).model_input, torch.tensor(1.0), rows(1).conditioning)
    assert time.perf_counter() - start < QUICK and a.shared == 1
    assert FLUSH_TIMEOUT not in [why for _, _, why in gatherer.flushes]


def test_the_timeout_is_a_safety_net_for_a_run_that_never_comes():
    gatherer = Gatherer(Model(), timeout_s=0.05)
    a, _silent = (BatchingDenoiser(gatherer, "shape", torch.device("cpu")) for _ in range(2))
    a(rows(1).model_input, torch.tensor(1.0), rows(1).conditioning)
    assert list(gatherer.flushes) == [("shape", 1, FLUSH_TIMEOUT)]


def test_a_failing_round_fails_every_call_in_it():
    def broken(items):
        raise RuntimeError("out of memory")

    gatherer = Gatherer(broken, timeout_s=LONG)
    a, b = (BatchingDenoiser(gatherer, "shape", torch.device("cpu")) for _ in range(2))
    errors = []

    def call(run) -> None:
        try:
            run(rows(1).model_input, torch.tensor(1.0), rows(1).conditioning)
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [in_thread(lambda run=run: call(run))[0] for run in (a, b)]
    for thread in threads:
        thread.join(QUICK)
    assert errors == ["out of memory"] * 2


def test_the_worker_takes_a_model_built_in_code(toy_pipe):
    """`loader`: a callable, or an importable "module:function" path (what bench_serve passes to its replicas)."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install -r requirements-serve.txt")
    from serving.worker import DenoiserWorker, WorkerLoadError, resolve_loader

    calls = []

    def loader(model, device, dtype, memory):
        calls.append((model, device, dtype, memory))
        return toy_pipe, None

    worker = DenoiserWorker.func_or_class("built", "cpu", loader=loader)
    assert worker.pipe is toy_pipe and worker.model_name == "built" and calls == [("built", "cpu", "auto", "auto")]
    assert resolve_loader("serving.worker:load_worker_models").__name__ == "load_worker_models"
    with pytest.raises(WorkerLoadError, match=r"^loader: expected 'module:function' or a callable, got 'nope'"):
        resolve_loader("nope")
