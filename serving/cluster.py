"""Start (or join) the Ray cluster and the workers' Serve application; shut them down.

`start(None, replicas=2)` starts a local cluster on this machine; `start("ray://host:10001", ...)` or
`start("auto", ...)` joins an existing one (several GPU machines), and reuses the workers there if `serve run`
already deployed them (`worker.app_builder`). Ray listens where `serving.security.init_kwargs()` says (loopback,
no dashboard or job API, token authentication on) where that module is present.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger("cfg_explorer.serving")

ROOT = Path(__file__).resolve().parent.parent  # the repository: the workers import pipeline/ and app.py from it
MAX_QUEUED = 64  # runs a page's handle queues before Serve answers "busy" (BackPressureError): the page says so


class ClusterStartError(RuntimeError):
    """The workers did not start; the message says why (the replica's own error where it failed to load)."""




def _runtime_env(address: str | None) -> dict:
    """Where the workers find this code: the repository on this machine's path (a local cluster), or uploaded
    with the job (a remote one; the nodes need the same Python packages, requirements-serve.txt)."""
    if address is None:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        return {"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}}
    return {"working_dir": str(ROOT), "excludes": [".git", ".venv", "**/__pycache__", "*.png", "bench/results"]}


def page_concurrency(replicas: int, max_queued: int = MAX_QUEUED) -> int:
    """Gradio's concurrency limit for the page's runs: what the workers run at once and Serve queues, plus a few,
    so that Serve's backpressure (not Gradio's silent queue) answers a crowd, and the page tells it."""
    from .worker import MAX_ONGOING

    return replicas * MAX_ONGOING + max_queued + 4


def worker_app(model: str = "toy", replicas: int = 1, device: str = "auto", dtype: str = "auto",
               memory: str = "auto", cpus_per_replica: float = 1, max_queued: int = MAX_QUEUED,
               batch_size: int | None = None, batch_timeout_s: float | None = None, loader=None):
    """The Serve application: `replicas` workers, each with one GPU where the cluster has GPUs (and `device`
    allows), else `cpus_per_replica` CPUs. `loader`: the workers' model loader instead of loading `model` by name
    (`worker.resolve_loader`: a picklable callable or a "module:function" path, called in each replica)."""
    import ray

    from .worker import BATCH_TIMEOUT_S, MAX_BATCH, DenoiserWorker

    gpus = ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
    use_gpu = device.startswith("cuda") or (device == "auto" and gpus)
    actor = {"num_gpus": 1} if use_gpu else {"num_cpus": cpus_per_replica}
    threads = None if use_gpu else max(1, int(cpus_per_replica))
    return DenoiserWorker.options(num_replicas=replicas, ray_actor_options=actor,
                                  max_queued_requests=max_queued).bind(
        model, "cuda" if use_gpu and device == "auto" else device, dtype, memory, threads,
        batch_size=MAX_BATCH if batch_size is None else batch_size,
        batch_timeout_s=BATCH_TIMEOUT_S if batch_timeout_s is None else batch_timeout_s, loader=loader)


def start(address: str | None, replicas: int, *, model: str = "toy", device: str = "auto", dtype: str = "auto",
          memory: str = "auto", num_cpus: int | None = None, cpus_per_replica: float = 1,
          max_queued: int = MAX_QUEUED, batch_size: int | None = None, batch_timeout_s: float | None = None,
          loader=None, reuse: bool = True):
    """A handle to the workers' application: started here (`address` None: a local cluster) or joined.
    `loader`: see `worker_app`."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from .security import init_kwargs, serve_start_kwargs

    security = init_kwargs(address)  # before ray is imported: it sets the environment Ray reads
    import ray
    from ray import serve

    from .worker import APP_NAME

    if not ray.is_initialized():
        local = {"num_cpus": num_cpus} if address is None and num_cpus else {}
        ray.init(address=address, runtime_env=_runtime_env(address), logging_level=logging.WARNING,
                 **local, **security)
    # No HTTP proxy: the page reaches the workers through a handle, and Gradio is the only public port.
    serve.start(**serve_start_kwargs())
    if address is not None and reuse and APP_NAME in serve.status().applications:
        logger.info("Using the workers already deployed on %s (application %r)", address, APP_NAME)
        return serve.get_app_handle(APP_NAME)
    app = worker_app(model, replicas, device, dtype, memory, cpus_per_replica, max_queued, batch_size,
                     batch_timeout_s, loader)
    try:
        return serve.run(app, name=APP_NAME, route_prefix=None)
    except Exception as exc:  # Serve's own error carries the replica's traceback: keep its last line, the reason
        raise ClusterStartError(f"The workers did not start: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for line in reversed(text.splitlines()):
        if "WorkerLoadError" in line or "Error:" in line:
            return line.split("WorkerLoadError: ", 1)[-1].strip()
    return text.strip().splitlines()[-1] if text.strip() else type(exc).__name__


def describe(handle, replicas: int) -> str:
    """The page's banner line: where runs go."""
    info = handle.info.remote().result()
    return (f"runs go to {replicas} Ray Serve worker{'s' if replicas > 1 else ''} ({info['model']} on "
            f"{info['device']}), several at a time; Stop reaches the worker")


def shutdown() -> None:
    """Delete the workers and leave the cluster (stopping it, where this process started it)."""
    import ray
    from ray import serve

    if ray.is_initialized():  # serve.shutdown() without Ray would start a cluster to shut down (14 s)
        serve.shutdown()
        ray.shutdown()
