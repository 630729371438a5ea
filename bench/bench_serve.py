"""The Ray Serve backend (issue 21): a worker's stream against in-process runs, many clients, same-shape batching.

    python -m bench.bench_serve [--parts stream,clients,batch] [--repeats 5] [--replicas 2]
    python -m bench.bench_serve --parts batch --device cuda --full-size   # on a GPU machine

- **stream**: the same toy request (4 seeds, 256 px, CFG 7.5, euler, linear previews every step; 30 and 100
  steps) streamed from a worker (`handle.options(stream=True).run.remote(spec)`, one 1-CPU replica on a local
  cluster) against `generate()` in this process, and against the worker's own loop (`replica_run.payloads`:
  previews decoded and made JPEGs, PNGs at the end) in this process. The difference over the steps is the
  per-step cost of the worker. A second replica without same-shape batching (batches of one) shows that the
  gatherer costs a lone run nothing.
- **clients**: `app.py --model toy` twice on free 127.0.0.1 ports: today's single-process queue, and
  `--backend ray --replicas R`. N clients (8, then 16) submit one run each at the same moment through the page's
  API (`/gradio_api/call/generate`, a toy run of `--client-steps` steps, 1 seed, 256 px) and read its stream:
  the makespan (the last client's end) and the p50 / p99 of each client's time to its first preview.
- **batch**: N same-shape runs at once on one replica, with the app's same-shape batching (the replica's
  `Gatherer`: a round closes when every run of the shape in progress has submitted), with the `@serve.batch`
  batching it replaced (a fixed `--batch-wait-ms` wait for company, 5 ms as before), and with batches of 1; and a
  run alone on each. The replicas hold bench/common.py's models through the worker's loader hook
  (`bench_models`: the small random SDXL on CPU; SDXL's full-size configs with `--full-size`), so the UNet
  dominates a step. The replicas' logs say how many runs shared each UNet call, and why the gatherer's rounds
  closed.

Wall time throughout: the work is spread over processes. Rounds alternate the variants' order (A B, B A...).
Ray is optional: without it this says so and exits 0. It starts its own local cluster (`serving.cluster`,
loopback only) and shuts it down.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .common import Comparison, build_models, finish_args, interleave, load_warning, parser, report, request

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
TOY = dict(prompt="red circle", mode="cfg", guidance_scale=7.5, seeds=(1, 2, 3, 4), width=256, height=256,
           scheduler="euler")
PARTS = ("stream", "clients", "batch")
# A streamed update that shows a step: the first preview. Not always step 1: the page shows the newest frame,
# so a client that reads late may first see step 3.
STEP = re.compile(r"step \d+/\d+")


def wall(fn):
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def drain(handle, spec) -> int:
    """Stream one run from a worker to its end; the number of payloads."""
    response = handle.options(stream=True, multiplexed_model_id=spec.shape_key()).run.remote(spec)
    return sum(1 for _ in response)


# ---------------------------------------------------------------------------------------------------------
# (a) a worker's stream against in-process runs


def stream_part(args) -> list[Comparison]:
    import torch
    from ray import serve

    from app import preview_autoencoder
    from pipeline import GenerationRequest, generate, toy_pipeline
    from serving import cluster
    from serving.protocol import RunSpec
    from serving.replica_run import ModelLock, payloads

    torch.set_num_threads(1)  # as a 1-CPU replica runs (Ray sets one torch thread there)
    pipe = toy_pipeline()
    taesd = preview_autoencoder(pipe, "toy")
    handle = cluster.start(None, 1, model="toy", device="cpu", num_cpus=2, cpus_per_replica=1)
    unbatched = serve.run(cluster.worker_app("toy", 1, "cpu", cpus_per_replica=1, batch_size=1),
                          name="bench-unbatched", route_prefix=None)
    comparisons = []
    try:
        for steps in args.stream_steps:
            spec = RunSpec(GenerationRequest(**TOY, steps=steps), preview="linear", preview_every=1)

            def here() -> None:
                for _ in generate(pipe, spec.request):
                    pass

            def loop_here() -> None:
                for _ in payloads(pipe, taesd, spec, ModelLock(), threading.Event(), "toy"):
                    pass

            assert drain(handle, spec) == steps  # one payload a step, in order (tests/serve checks the order)
            times = interleave({"generate() here": wall(here), "worker loop here": wall(loop_here),
                                "Serve stream": wall(lambda: drain(handle, spec)),
                                "Serve stream, unbatched": wall(lambda: drain(unbatched, spec))}, args.repeats)
            medians = {name: statistics.median(values) for name, values in times.items()}
            rows = report(f"stream: toy, {steps} steps, 4 seeds, 256 px, linear previews every step (wall time)",
                          times, [
                              Comparison(f"Serve / generate() at {steps} steps", "Serve stream", "generate() here",
                                         None, "prototype: 1.23 at 30, 1.10 at 100"),
                              Comparison(f"Serve / worker loop here at {steps}", "Serve stream", "worker loop here",
                                         None, "the transport alone"),
                              Comparison(f"Serve unbatched / worker loop at {steps}", "Serve stream, unbatched",
                                         "worker loop here", None),
                          ])
            for name in ("Serve stream", "Serve stream, unbatched"):
                over = (medians[name] - medians["generate() here"]) / steps * 1e3
                loop = (medians[name] - medians["worker loop here"]) / steps * 1e3
                print(f"  {name}: {over:+.2f} ms a step over generate(), {loop:+.2f} ms over the worker loop here")
            comparisons += rows
    finally:
        cluster.shutdown()
    return comparisons


# ---------------------------------------------------------------------------------------------------------
# (b) many clients through the page's API


def start_app(tmp: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TMPDIR": tmp, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "RAY_USAGE_STATS_ENABLED": "0"}
    log = open(Path(tmp) / "app.log", "w")
    process = subprocess.Popen([sys.executable, "app.py", "--model", "toy", "--host", HOST, "--port", str(port),
                                *extra], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://{HOST}:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            httpx.get(f"{url}/gradio_api/info", timeout=2).raise_for_status()
            return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    raise SystemExit(f"app.py {' '.join(extra)} did not start: {(Path(tmp) / 'app.log').read_text()[-2000:]}")


def stop_app(process: subprocess.Popen) -> None:
    """SIGTERM first: the Ray app shuts its cluster down on the way out; then make sure."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def api_payload(url: str, **values) -> list:
    import httpx

    params = httpx.get(f"{url}/gradio_api/info", timeout=30).json()["named_endpoints"]["/generate"]["parameters"]
    return [values.get(p["parameter_name"], p.get("parameter_default")) for p in params]


def client(url: str, data: list, began: float) -> tuple[float | None, float, str]:
    """One client's run through the API: (seconds to its first preview, seconds to its end, how it ended),
    both from the common start `began`."""
    import httpx

    event_id = httpx.post(f"{url}/gradio_api/call/generate", content=json.dumps({"data": data}), timeout=120,
                          headers={"content-type": "application/json"}).json()["event_id"]
    first, ended = None, "no end"
    with httpx.stream("GET", f"{url}/gradio_api/call/generate/{event_id}", timeout=600) as stream:
        for line in stream.iter_lines():
            if first is None and line.startswith("data:") and STEP.search(line):
                first = time.perf_counter() - began
            if line.startswith("event: complete") or line.startswith("event: error"):
                ended = line.split(":", 1)[1].strip()
                break
    return first, time.perf_counter() - began, ended


def crowd(url: str, data: list, n: int) -> tuple[float, list[float], int]:
    """N clients submit at once: (makespan, their first-preview times, how many did not complete)."""
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda _: client(url, data, began), range(n)))
    failed = sum(1 for _, _, how in results if how != "complete")
    return max(end for _, end, _ in results), [f for f, _, _ in results if f is not None], failed


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def clients_part(args) -> list[Comparison]:
    comparisons = []
    with tempfile.TemporaryDirectory() as tmp_local, tempfile.TemporaryDirectory() as tmp_ray:
        apps = {"one process": start_app(tmp_local, []),
                f"Ray, {args.replicas} replicas": start_app(tmp_ray, ["--backend", "ray", "--replicas",
                                                                     str(args.replicas)])}
        try:
            data = {name: api_payload(url, prompt="red circle", steps=args.client_steps, width=256, height=256,
                                      num_seeds=1, preview="linear") for name, (_, url) in apps.items()}
            for name, (_, url) in apps.items():  # warm-up: first-call costs are not what we measure
                crowd(url, data[name], 2)
            for n in args.clients:
                makespans = {name: [] for name in apps}
                firsts = {name: [] for name in apps}
                failures = dict.fromkeys(apps, 0)
                names = list(apps)
                for r in range(args.client_rounds):
                    for name in names if r % 2 == 0 else names[::-1]:
                        span, first, failed = crowd(apps[name][1], data[name], n)
                        makespans[name].append(span)
                        firsts[name] += first
                        failures[name] += failed
                print(f"\n== {n} clients at once, each one toy run ({args.client_steps} steps, 1 seed, 256 px, "
                      f"linear previews), {args.client_rounds} rounds (wall time)")
                for name in names:
                    print(f"  {name:<22} makespan median {statistics.median(makespans[name]):6.2f} s   first preview "
                          f"p50 {statistics.median(firsts[name]):6.2f} s  p99 {p99(firsts[name]):6.2f} s   "
                          f"({len(firsts[name])} previews, {failures[name]} runs not completed)")
                ray_name, local = names[1], names[0]
                rows = report(f"{n} clients: makespan", makespans, [
                    Comparison(f"{n} clients makespan: Ray / one process", ray_name, local, None,
                               "prototype: 8 clients 1.00 s against 1.34 s")])
                first_times = {name: [statistics.median(firsts[name])] for name in names}
                rows += report(f"{n} clients: median first preview", first_times, [
                    Comparison(f"{n} clients p50 first preview: Ray / one process", ray_name, local, None)])
                comparisons += rows
        finally:
            for process, _ in apps.values():
                stop_app(process)
    return comparisons


# ---------------------------------------------------------------------------------------------------------
# (c) same-shape batching


def bench_models(model: str, device: str, dtype: str, memory: str):
    """The batch part's replicas' loader (`DenoiserWorker(loader="bench.bench_serve:bench_models")`): bench/common.py's
    models with random weights, SDXL's full-size configs where `model` is "bench-full"."""
    models = build_models(device, model == "bench-full")
    return models.pipe, models.taesd


def serve_batch_worker():
    """The replica as it batched before the gatherer (kept here only to compare, in the same run): each UNet call
    goes to a `@serve.batch` method that closes a batch at `max_batch_size` or `batch_wait_timeout_s`, and a run
    alone on the replica calls the UNet at once."""
    import asyncio
    import concurrent.futures

    import torch
    from ray import serve

    from serving.batching import Rows, run_batch
    from serving.worker import MAX_BATCH, MAX_ONGOING, DenoiserWorker

    class FixedWaitDenoiser:
        def __init__(self, worker, device) -> None:
            self.worker, self.device, self.chunks, self.shared = worker, device, 0, 1
            self.loop = asyncio.get_running_loop()
            worker.runs += 1

        def close(self) -> None:
            self.worker.runs -= 1

        def __call__(self, model_input, t, conditioning, variant: str = "") -> torch.Tensor:
            rows, w = Rows(model_input, t, conditioning, variant), self.worker
            if w.runs <= 1:
                result = run_batch(w.denoiser, [rows], w.lock, w._log)[0]
            else:
                result = asyncio.run_coroutine_threadsafe(w._unet_rows(rows), self.loop).result()
            noise, self.chunks, self.shared = result
            return noise

    class ServeBatchWorker(DenoiserWorker.func_or_class):
        def __init__(self, *args, wait_s: float, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.runs = 0
            self.model_pool = concurrent.futures.ThreadPoolExecutor(1)
            self._unet_rows.set_max_batch_size(MAX_BATCH)
            self._unet_rows.set_batch_wait_timeout_s(wait_s)

        @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.005)
        async def _unet_rows(self, items):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.model_pool, run_batch, self.denoiser, items, self.lock, self._log)

        def _batching(self, key: str):
            return FixedWaitDenoiser(self, self.device)

    return serve.deployment(max_ongoing_requests=MAX_ONGOING)(ServeBatchWorker)


def batch_part(args) -> list[Comparison]:
    import ray
    from ray import serve

    from serving import cluster
    from serving.protocol import RunSpec
    from serving.security import init_kwargs, serve_start_kwargs
    from serving.worker import BATCH_TIMEOUT_S, MAX_BATCH, DenoiserWorker

    kwargs = init_kwargs()
    cuda = args.device.startswith("cuda")
    ray.init(num_cpus=3, runtime_env=cluster._runtime_env(None), logging_level="WARNING", **kwargs)
    serve.start(**serve_start_kwargs())
    # The replicas share the one GPU, or take a core each (3 logical CPUs on 2 cores: one replica works at a time).
    actor = {"num_gpus": 0.3} if cuda else {"num_cpus": 1}
    wait = args.batch_wait_ms / 1e3
    before = f"serve.batch {args.batch_wait_ms:g} ms"
    model = "bench-full" if args.full_size else "bench-small"
    common = dict(threads=None if cuda else 1, loader="bench.bench_serve:bench_models")
    apps = {"gatherer": DenoiserWorker.options(ray_actor_options=actor).bind(model, args.device, **common),
            before: serve_batch_worker().options(ray_actor_options=actor).bind(model, args.device, wait_s=wait,
                                                                               **common),
            "unbatched": DenoiserWorker.options(ray_actor_options=actor).bind(model, args.device, batch_size=1,
                                                                              **common)}
    handles = {label: serve.run(app, name=f"bench-{i}", route_prefix=None)
               for i, (label, app) in enumerate(apps.items())}
    n = args.batch_runs
    specs = [RunSpec(request(args, seeds=tuple(range(1 + i * args.seeds, 1 + (i + 1) * args.seeds))),
                     preview="linear", preview_every=args.steps) for i in range(n)]

    def runs_at_once(handle) -> None:
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            assert list(pool.map(lambda spec: drain(handle, spec), specs)) == [args.steps] * n

    try:
        alone = {f"1 run, {label}": wall(lambda h=h: drain(h, specs[0])) for label, h in handles.items()}
        together = {f"{n} runs, {label}": wall(lambda h=h: runs_at_once(h)) for label, h in handles.items()}
        times = interleave({**together, **alone}, args.repeats)
        logs, rounds = {}, []
        for label in ("gatherer", before):  # one more, untimed, round of N runs: its UNet calls alone
            skip = len(handles[label].unet_log.remote().result())
            skip_rounds = len(handles[label].rounds.remote().result())
            runs_at_once(handles[label])
            logs[label] = [calls for _, calls, _ in handles[label].unet_log.remote().result()[skip:]]
            if label == "gatherer":
                rounds = handles[label].rounds.remote().result()[skip_rounds:]
        rows = report(f"batch: {n} same-shape runs at once on one replica ({args.size} px, {args.steps} steps, "
                      f"{args.seeds} seed(s) each; wall time)", times, [
                          Comparison(f"{n} runs: gatherer / unbatched", f"{n} runs, gatherer", f"{n} runs, unbatched",
                                     None, "on CPU the gain is small (issue 21)"),
                          Comparison(f"{n} runs: {before} / unbatched", f"{n} runs, {before}",
                                     f"{n} runs, unbatched", None, "before: a fixed wait for company"),
                          Comparison("1 run: gatherer / unbatched", "1 run, gatherer", "1 run, unbatched", None,
                                     "a lone run never waits"),
                          Comparison(f"1 run: {before} / unbatched", f"1 run, {before}", "1 run, unbatched", None),
                      ])
        for label, joined in logs.items():
            print(f"  {label} replica, one more round of {n} runs: {len(joined)} UNet calls for {sum(joined)} runs' "
                  f"calls, {statistics.mean(joined):.2f} runs a call on average, at most {max(joined)}")
        whys = collections.Counter(why for _, _, why in rounds)
        print(f"  its gatherer rounds closed: {dict(whys)} (all: every run of the shape in progress had submitted; "
              f"full: {MAX_BATCH} calls; timeout: after {BATCH_TIMEOUT_S * 1e3:g} ms)")
        return rows
    finally:
        cluster.shutdown()


def main(argv: list[str] | None = None) -> list[Comparison]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--stream-steps", default="30,100", help="toy steps of the stream runs (default 30,100)")
    p.add_argument("--clients", default="8,16", help="crowd sizes (default 8,16)")
    p.add_argument("--client-rounds", type=int, default=3, help="rounds per crowd size and backend (default 3)")
    p.add_argument("--client-steps", type=int, default=30, help="steps of each client's toy run (default 30)")
    p.add_argument("--replicas", type=int, default=2, help="replicas of the Ray app in the clients part (default 2)")
    p.add_argument("--batch-runs", type=int, default=8, help="same-shape runs at once in the batch part (default 8)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="the fixed wait of the @serve.batch replica the gatherer is compared with "
                        "(default 5, as before)")
    args = p.parse_args(argv)
    if args.size is None and not args.full_size:
        args.size = 128  # the batch part's small SDXL on CPU: 8 runs at 512 px take minutes on 2 busy cores
    args = finish_args(args)
    args.stream_steps = [int(s) for s in args.stream_steps.split(",")]
    args.clients = [int(s) for s in args.clients.split(",")]
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        raise SystemExit(f"--parts: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    try:
        import ray  # noqa: F401
    except ImportError:
        print("Ray is not installed (pip install -r requirements-serve.txt): nothing to measure")
        return []
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if warning := load_warning():
        print(warning)
    comparisons = []
    for part, fn in (("stream", stream_part), ("clients", clients_part), ("batch", batch_part)):
        if part in parts:
            start = time.perf_counter()
            comparisons += fn(args)
            print(f"  ({part}: {time.perf_counter() - start:.0f} s)")
    return comparisons


if __name__ == "__main__":
    main(sys.argv[1:])
