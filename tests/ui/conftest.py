"""A CFG Explorer server on the tiny model, launched in-process once for the UI tests."""

import socket
import threading
import time
from unittest import mock

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GATE_TIMEOUT = 120  # seconds a held UNet call waits for `allow` before going on anyway (a failed test's run)


class Throttle:
    """Paces the tiny UNet, so a run is slow enough to watch or stop, and counts its calls.

    The tiny UNet runs a step in milliseconds, faster than Gradio can ship a frame; real SDXL is the other
    way round. `delay` makes each call take at least that long; `hold()` makes each call wait until the
    test `allow`s it, so a test can step a run in lockstep with what it has received (no timing at all).
    """

    def __init__(self, unet):
        self.unet, self.delay, self.calls = unet, 0.0, 0
        self._forward = unet.forward
        self._lock = threading.Lock()
        self._gate: threading.Semaphore | None = None
        # patch.object puts back exactly what was there, even if another wrapper came and went meanwhile
        self._patch = mock.patch.object(unet, "forward", self._slow)
        self._patch.start()

    def _slow(self, *args, **kwargs):
        with self._lock:
            self.calls += 1
        gate = self._gate
        if gate is not None:
            gate.acquire(timeout=GATE_TIMEOUT)
        if self.delay:
            time.sleep(self.delay)
        return self._forward(*args, **kwargs)

    def hold(self) -> None:
        """From now on every UNet call waits for a permit from `allow`."""
        self._gate = threading.Semaphore(0)

    def allow(self, calls: int = 1) -> None:
        self._gate.release(calls)

    def lockstep(self, job, status: int) -> list:
        """Every update of `job` (submitted after `hold`), in lockstep: the run takes a UNet step only once the
        update of the step before has arrived. `status`: where the status text sits in an update."""
        self.allow()
        outputs = []
        for out in job:
            outputs.append(out)
            if "Starting" not in out[status]:
                self.allow()
        return outputs

    def release(self) -> None:
        """No more holding; calls already waiting go on."""
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.release(10_000)

    def restore(self):
        self.release()
        self._patch.stop()


def run_threads() -> set[threading.Thread]:
    """The generation worker threads alive now (ui/streaming.py names them)."""
    return {t for t in threading.enumerate() if t.name == "cfg-explorer-run"}


def wait_for_threads_to_end(threads: set[threading.Thread], timeout: float = 60) -> None:
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), f"{thread.name} still running {timeout} s after Stop"


@pytest.fixture(scope="package")  # torn down (UNet unpatched) before other packages' tests use the pipe
def app_server(tiny_pipe, tmp_path_factory):
    from pipeline import tiny_taesd
    from pipeline.presets import load_presets
    from ui import Handlers, build_demo, render

    throttle = Throttle(tiny_pipe.unet)
    handlers = Handlers(tiny_pipe, taesd=tiny_taesd(), model_name="tiny", presets=load_presets(),
                        output_dir=tmp_path_factory.mktemp("outputs"))
    demo = build_demo(handlers, banner=render.banner("tiny", None), default_size=64)
    demo.queue(default_concurrency_limit=1)
    demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    try:
        yield demo, throttle
    finally:
        demo.close()
        throttle.restore()


@pytest.fixture
def server(app_server):
    demo, throttle = app_server
    throttle.delay = 0.0
    yield demo.local_url, throttle
    throttle.release()
    throttle.delay = 0.0


@pytest.fixture
def client(server):
    from gradio_client import Client

    # download_files=False: otherwise the client downloads every streamed frame
    return Client(server[0], download_files=False, verbose=False)
