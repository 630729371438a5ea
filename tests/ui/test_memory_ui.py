"""Out of memory in a live server: the run ends with what to do, the cache is freed, and the server keeps serving."""

import threading
from unittest import mock

import torch

from .test_app import run


class OutOfMemoryAt:
    """Makes the UNet raise CUDA's out-of-memory error on its `at`-th call (1-based) of a batch of `rows` or more."""

    def __init__(self, unet, at: int, rows: int):
        self.unet, self.at, self.rows, self.calls = unet, at, rows, 0
        self._forward = unet.forward
        self._lock = threading.Lock()

    def __call__(self, sample, *args, **kwargs):
        if len(sample) >= self.rows:
            with self._lock:
                self.calls += 1
                if self.calls == self.at:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB (stand-in)")
        return self._forward(sample, *args, **kwargs)


def test_out_of_memory_ends_the_run_with_advice_frees_the_cache_and_a_smaller_run_succeeds(client, tiny_pipe):
    oom = OutOfMemoryAt(tiny_pipe.unet, at=3, rows=8)  # 4 seeds under CFG: 8 rows
    with mock.patch.object(tiny_pipe.unet, "forward", oom), \
            mock.patch("ui.fields.free_cache") as free_cache:
        job, outputs = run(client, steps=5, num_seeds=4, seed=1)
        error = job.exception()
        assert error is not None, "the run should have failed"
        message = str(error)
        for words in ("Out of GPU memory", "Number of seeds", "Width and Height", "Preview decoder",
                      "--memory offload"):
            assert words in message
        free_cache.assert_called_once_with()
        assert oom.calls == 3  # it stopped at the failing step
        statuses = [out[1] for out in outputs]
        assert statuses and not any("Done" in s for s in statuses)

        job, outputs = run(client, steps=5, num_seeds=2, seed=1)  # 4 rows: under the stand-in's limit
        assert job.exception() is None
        assert "Done" in outputs[-1][1]
        assert len(outputs[-1][4]) == 2
