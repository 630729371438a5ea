"""The page over another backend (`handlers.remote`, the Ray workers): a run that ends for a reason outside its
settings (a worker lost, a full queue) says so in the status, under where it stopped, and the workers' PNG bytes
are written as they came. A fake backend stands in for the workers: no Ray here."""

import pytest

from pipeline.presets import load_presets
from ui import Handlers
from ui.controls import CONTROL_NAMES
from ui.explore import GENERATE_OUTPUTS, Explore
from ui.streaming import Frame, Run, RunInterrupted

from .test_explore import page_values


class FakeRun(Run):
    """Two steps from "a worker", then the given ending: an interruption, or final PNG bytes."""

    def __init__(self, request, ending):
        super().__init__(None, request, None)
        self.ending = ending

    def _work(self):
        try:
            for step in (1, 2):
                self._publish(Frame(step, 6, 0.1 * step))
            if isinstance(self.ending, BaseException):
                raise self.ending
            self._publish(Frame(6, 6, 0.6, images=self.ending))
        except BaseException as exc:
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()


class FakeRemote:
    def __init__(self, ending):
        self.ending = ending

    def run(self, request, preview, every, source, cache, *, fork=None, history=None, start=0):
        return FakeRun(request, self.ending)


@pytest.fixture
def explore(tiny_pipe, tmp_path):
    return Explore(Handlers(tiny_pipe, model_name="tiny", presets=load_presets(), output_dir=tmp_path),
                   default_size=64)


def generate(explore):
    values = page_values(steps=6, preview="linear")
    return [dict(zip(GENERATE_OUTPUTS, u)) for u in explore.generate(*(values[name] for name in CONTROL_NAMES))]


def test_an_interrupted_remote_run_says_why_in_the_status(explore):
    explore.handlers.remote = FakeRemote(RunInterrupted("**The worker running this run stopped** (lost)."))
    last = generate(explore)[-1]
    assert last["status"].startswith("**The worker running this run stopped** (lost).\n\n**Stopped at step 2/6.**")


def test_a_remote_runs_png_bytes_are_written_as_they_came(explore):
    pngs = [b"\x89PNG first", b"\x89PNG second"]
    explore.handlers.remote = FakeRemote(pngs)
    last = generate(explore)[-1]
    assert [open(path, "rb").read() for path in last["downloads"]] == pngs
