"""A replica killed mid-run ends that run with a clear message, and the next run is served; a worker that cannot
load its model says why. (Named to run last: it kills a replica, which Serve then replaces.)"""

import time

import pytest

from serving.frontend import BUSY, WORKER_LOST, interruption
from ui.streaming import RunInterrupted

from .helpers import toy_request


def test_a_killed_replica_ends_its_run_clearly_and_the_next_run_is_served(handle, remote):
    import ray

    run = remote.run(toy_request(steps=200, seeds=(1,)), "linear", 1, "pred_x0", None).start()
    frames = run.frames()
    next(frames)
    next(frames)
    on_it = handle.options(multiplexed_model_id=run.spec.shape_key())  # routed to the replica running that shape
    assert run.spec.tag in on_it.steps_run.remote().result()
    victim = on_it.info.remote().result()["actor"]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    with pytest.raises(RunInterrupted) as failure:
        for _ in frames:
            pass
    assert "The worker running this run stopped" in str(failure.value)
    started = time.perf_counter()
    again = remote.run(toy_request(steps=4, seeds=(2,)), "linear", 1, "pred_x0", None).start()
    last = list(again.frames())[-1]
    assert last.step == 4 and last.images is not None
    assert time.perf_counter() - started < 30


def test_worker_failures_read_as_the_status_says_them():
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import BackPressureError

    busy = interruption(BackPressureError(num_queued_requests=64, max_queued_requests=64))
    assert str(busy) == BUSY.format(queued=64)
    lost = interruption(ActorDiedError())
    assert str(lost).startswith(WORKER_LOST.split("(")[0])
    assert interruption(ValueError("steps: must be ...")) is None  # the request's own fault stays an error


def test_a_worker_that_cannot_load_its_model_says_why():
    from serving.worker import WorkerLoadError, load_worker_models

    with pytest.raises(WorkerLoadError, match=r"could not load the model '/nonexistent/model'"):
        load_worker_models("/nonexistent/model", "cpu", "auto", "auto")
