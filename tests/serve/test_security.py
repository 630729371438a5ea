"""What a `--backend ray` cluster opens to the network, and that every port asks for Ray's token (issue 21).

Ray's dashboard and job API run arbitrary code for anyone who can reach them (CVE-2023-48022, "ShadowRay").
Each test lists the TCP ports that the cluster's processes listen on and probes each one the way an
outsider would: a port must either serve Prometheus metrics only (and no job API), or refuse a caller who
has no token (HTTP 401, gRPC UNAUTHENTICATED). Loopback ports are probed too: on a shared machine every local
user reaches them.
"""

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

ray = pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-serve.txt")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is optional: pip install -r requirements-serve.txt")
grpc = pytest.importorskip("grpc", reason="grpcio comes with ray[serve]")
psutil = pytest.importorskip("psutil", reason="psutil comes with ray")

from serving import security  # noqa: E402

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
WRONG_TOKEN = "0" * 64
# One harmless read per gRPC service that a Ray process serves; a port answers to one of them. Requests are
# empty protobuf messages: the point is whether the server asks for the token before it looks at them.
GRPC_PROBES = (
    "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",  # GCS
    "/ray.rpc.NodeManagerService/GetNodeStats",  # raylet
    "/ray.rpc.ObjectManagerService/Pull",  # raylet's object manager (an empty request names no object)
    "/ray.rpc.CoreWorkerService/NumPendingTasks",  # every worker and the driver
    "/ray.rpc.ReporterService/HealthCheck",  # dashboard agent
    "/ray.rpc.LogService/ListLogs",  # dashboard agent
    "/ray.serve.ASGIService/HandleRequest",  # Serve replicas' inter-deployment server
)


@dataclass(frozen=True)
class Listener:
    ip: str
    port: int
    process: str

    @property
    def loopback(self) -> bool:
        return self.ip in LOOPBACK


@pytest.fixture(scope="module")
def cluster():
    """A local cluster as `--backend ray` starts it, with one Serve replica (its gRPC port is Serve's own)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    me = psutil.Process()
    before = {c.laddr.port for c in me.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, **security.init_kwargs())
    serve.start(**security.serve_start_kwargs())

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Probe:
        async def __call__(self) -> int:
            return os.getpid()

    serve.run(Probe.bind(), name="security-probe", route_prefix=None).remote().result(timeout_s=60)
    settled(before)
    yield before
    serve.delete("security-probe")
    if started:
        serve.shutdown()
        ray.shutdown()


def ray_listeners(driver_ports_before: set[int]) -> list[Listener]:
    """Every listening TCP socket of this driver (those Ray opened) and of the processes Ray started."""
    node = ray._private.worker._global_node
    roots = [psutil.Process(p.process.pid) for procs in node.all_processes.values() for p in procs]
    procs = {p.pid: p for root in roots for p in [root, *root.children(recursive=True)]}
    me = psutil.Process()
    found = [
        Listener(c.laddr.ip, c.laddr.port, "driver")
        for c in me.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port not in driver_ports_before
    ]
    for pid, proc in procs.items():
        try:
            conns = proc.net_connections("tcp")
            name = proc.name()
        except psutil.NoSuchProcess:  # a worker that exited while we looked
            continue
        found += [Listener(c.laddr.ip, c.laddr.port, name) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def settled(driver_ports_before: set[int], quiet_s: float = 1.5, limit_s: float = 15) -> None:
    """Wait until no new port opens for `quiet_s`: the dashboard's and monitor's metrics servers start late."""
    seen, since, start = set(), time.monotonic(), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() - start < limit_s:
        now = {(lst.ip, lst.port) for lst in ray_listeners(driver_ports_before)}
        if now - seen:
            seen, since = seen | now, time.monotonic()
        time.sleep(0.25)


def reach(listener: Listener) -> str:
    """The address an outsider uses: loopback for a loopback bind, the machine's own address otherwise."""
    if listener.loopback:
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # picks the outgoing interface; sends nothing (UDP, TEST-NET-1)
        return s.getsockname()[0]


def http_status(url: str, method: str = "GET", token: str | None = None) -> tuple[int, str] | None:
    """(status, body) of one HTTP request, or None when the port does not speak HTTP/1."""
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status, response.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(4096).decode("utf-8", "replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
        return None
    except Exception as exc:  # http.client.BadStatusLine and kin: an HTTP/2-only (gRPC) server
        if type(exc).__module__ == "http.client":
            return None
        raise


def grpc_code(host: str, port: int, method: str, token: str | None) -> "grpc.StatusCode":
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        metadata = [("authorization", f"Bearer {token}")] if token is not None else None
        try:
            call(b"", timeout=5, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


def classify(listener: Listener, token: str) -> str:
    """'metrics', 'refuses' (named with how), or a failure message naming what answered without the token."""
    host = reach(listener)
    base = f"http://{host}:{listener.port}"
    answer = http_status(f"{base}/metrics")
    if answer is not None:
        status, body = answer
        if status == 200 and ("# HELP" in body or "# TYPE" in body):
            jobs = http_status(f"{base}/api/jobs/", method="POST")
            if jobs is not None and 200 <= jobs[0] < 300:
                return f"FAIL: {base} serves metrics and accepted a job POST ({jobs[0]})"
            return "metrics"
        bare = http_status(f"{base}/api/jobs/", method="POST")
        wrong = http_status(f"{base}/api/jobs/", method="POST", token=WRONG_TOKEN)
        right = http_status(f"{base}/api/jobs/", token=token)
        if bare and wrong and bare[0] == 401 and wrong[0] == 403 and right and right[0] not in (401, 403):
            return "refuses: HTTP 401 without a token, 403 with a wrong one"
        return f"FAIL: {base} answered HTTP without the token: {bare} / {wrong}"
    for method in GRPC_PROBES:
        bare = grpc_code(host, listener.port, method, None)
        if bare == grpc.StatusCode.UNIMPLEMENTED:
            continue
        wrong = grpc_code(host, listener.port, method, WRONG_TOKEN)
        right = grpc_code(host, listener.port, method, token)
        if bare == wrong == grpc.StatusCode.UNAUTHENTICATED and right != grpc.StatusCode.UNAUTHENTICATED:
            return f"refuses: gRPC {method.rsplit('/', 2)[1]} UNAUTHENTICATED without the token"
        return f"FAIL: {host}:{listener.port} {method}: {bare.name} without a token, {wrong.name} with a wrong one"
    return f"FAIL: {host}:{listener.port} ({listener.process}) answers neither HTTP nor any probed gRPC service"


def cluster_token() -> str:
    return os.environ.get(security.TOKEN) or security.token_path().read_text().strip()


def test_only_serve_replicas_listen_beyond_loopback(cluster):
    """The README's list: Serve's replica gRPC server binds [::] (hard-coded in Ray 2.60); all else is loopback."""
    listeners = ray_listeners(cluster)
    assert any(not lst.loopback for lst in listeners if "ServeReplica" in lst.process), listeners
    beyond = [lst for lst in listeners if not lst.loopback and "ServeReplica" not in lst.process]
    assert beyond == [], f"Ray ports beyond loopback: {beyond}"


def test_every_ray_port_serves_metrics_or_refuses_a_caller_without_the_token(cluster):
    token = cluster_token()
    verdicts = {lst: classify(lst, token) for lst in ray_listeners(cluster)}
    failures = {lst: v for lst, v in verdicts.items() if v.startswith("FAIL")}
    assert not failures, "\n".join(f"{lst}: {v}" for lst, v in failures.items())
    kinds = {v.split(":")[0] for v in verdicts.values()}
    assert kinds == {"metrics", "refuses"}, verdicts  # both probes ran: Ray's metrics ports answer Prometheus text


def test_no_dashboard_or_job_api(cluster):
    assert ray._private.worker._global_node.address_info["webui_url"] in ("", None)
    from ray.job_submission import JobSubmissionClient

    for lst in ray_listeners(cluster):
        with pytest.raises(Exception):  # no job server on any port, with or without the token
            JobSubmissionClient(f"http://{reach(lst)}:{lst.port}", headers={"Authorization": f"Bearer {WRONG_TOKEN}"})


def test_a_driver_without_the_token_cannot_join(cluster, tmp_path):
    """`ray.init(address=...)` from another process, with no token file and no token: the GCS refuses it."""
    gcs = ray._private.worker._global_node.address_info["gcs_address"]
    script = textwrap.dedent(
        f"""
        import ray
        try:
            ray.init(address={gcs!r}, log_to_driver=False)
        except Exception as exc:
            print("REFUSED", type(exc).__name__, str(exc)[:300])
        else:
            print("JOINED")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    # Two connection tries, not twenty: a refusal is final.
    env.update(HOME=str(tmp_path), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_NUM_REDIS_GET_RETRIES="2")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert "REFUSED" in out.stdout, out.stdout + out.stderr
    # Ray 2.60 raises a ConnectionError; the GCS's answer, logged by its client, says why.
    assert "Unauthenticated: RPC error: InvalidAuthToken" in out.stderr, out.stdout + out.stderr


def test_token_file_is_private_and_outside_served_folders(cluster):
    if os.environ.get(security.TOKEN):
        pytest.skip("the token is given inline (RAY_AUTH_TOKEN): there is no file")
    path = security.token_path()
    assert path.stat().st_mode & 0o077 == 0, oct(path.stat().st_mode)
    assert not any(path.is_relative_to(root) for root in security.served_roots())


@pytest.fixture(scope="module")
def guarded_ray_app(tmp_path_factory):
    """`python app.py --backend ray --auth ...`: the page, its cluster and one worker, as a user starts them."""
    from tests.reliability import conftest as reliability

    reliability.START_TIMEOUT = 300  # a cluster and a worker to start on a loaded 2-core machine
    server = reliability.Server(reliability.free_port(), tmp_path_factory.mktemp("ray-app"),
                                args=("--backend", "ray", "--replicas", "1", "--auth", "ada:lovelace"),
                                env={"RAY_USAGE_STATS_ENABLED": "0"})
    server.auth = ("ada", "lovelace")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow  # starts app.py, its cluster and a worker: about 45 s
def test_the_ray_app_keeps_its_login_and_opens_only_token_guarded_ports(guarded_ray_app):
    """The page's port is the public one and `--auth` guards it; its cluster adds only Serve's token-guarded port."""
    from tests.reliability.conftest import QUICK

    server = guarded_ray_app
    anonymous = {
        "api info": httpx_status("GET", f"{server.url}/gradio_api/info"),
        "api call": httpx_status("POST", f"{server.url}/gradio_api/call/generate", json={"data": []}),
    }
    assert set(anonymous.values()) <= {401, 403}, anonymous
    kind, _ = server.call("generate", server.payload("generate", **QUICK), timeout=300)
    assert kind == "complete"  # behind the login, a run on the worker completes
    app = psutil.Process(server.process.pid)
    procs = [app, *app.children(recursive=True)]
    beyond = []
    for proc in procs:
        try:
            conns, name = proc.net_connections("tcp"), proc.name()
        except psutil.NoSuchProcess:
            continue
        beyond += [Listener(c.laddr.ip, c.laddr.port, name) for c in conns
                   if c.status == psutil.CONN_LISTEN and c.laddr.ip not in LOOPBACK]
    assert beyond and all("ServeReplica" in lst.process for lst in beyond), beyond
    token = cluster_token()  # the app's cluster reads the same token file as this one
    for lst in beyond:
        assert classify(lst, token).startswith("refuses"), lst


def httpx_status(method: str, url: str, **kwargs) -> int:
    import httpx

    return httpx.request(method, url, timeout=30, **kwargs).status_code
