"""One local Ray cluster for the whole of tests/serve: 2 CPUs, two toy-world workers of one CPU each.

Skipped, with the reason, where ray[serve] is not installed (pip install -r requirements-serve.txt)."""

import os

import pytest

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install -r requirements-serve.txt")

REPLICAS = 2
# The workers' batching safety net (worker.BATCH_TIMEOUT_S is 0.1 s): long here, so that a round waiting for a run
# that will not come shows as a stall and a "timeout" round (tests/serve/test_batching.py counts them).
BATCH_TIMEOUT_S = 2.0


@pytest.fixture(scope="session")
def handle():
    import ray

    from serving import cluster

    try:
        yield cluster.start(None, REPLICAS, model="toy", num_cpus=2, batch_timeout_s=BATCH_TIMEOUT_S)
    finally:
        if ray.is_initialized():  # serve.shutdown() without Ray would start a cluster to shut it down
            cluster.shutdown()


@pytest.fixture
def remote(handle):
    from serving.frontend import RemoteRuns

    return RemoteRuns(handle)
