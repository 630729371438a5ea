"""One local Ray cluster for the whole of tests/serve: 2 CPUs, two toy-world workers of one CPU each.

Skipped, with the reason, where ray[serve] is not installed (pip install -r requirements-serve.txt)."""

import os

import pytest

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install -r requirements-serve.txt")

REPLICAS = 2


@pytest.fixture(scope="session")
def handle():
    import ray

    from serving import cluster

    try:
        yield cluster.start(None, REPLICAS, model="toy", num_cpus=2)
    finally:
        if ray.is_initialized():  # serve.shutdown() without Ray would start a cluster to shut it down
            cluster.shutdown()


@pytest.fixture
def remote(handle):
    from serving.frontend import RemoteRuns

    return RemoteRuns(handle)
