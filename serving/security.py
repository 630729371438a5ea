"""Keep a `--backend ray` cluster off the network: loopback binds, Ray's token auth on, the token file private.

Why: Ray's dashboard and job API run arbitrary code for anyone who can reach them (CVE-2023-48022,
"ShadowRay", exploited in the wild against exposed clusters), and a teaching demo runs on a shared link.

Measured with Ray 2.60 on Linux (tests/serve/test_security.py lists the ports): `_node_ip_address="127.0.0.1"`
alone is not enough, because `ray.init` replaces a loopback address by the machine's routable one
(`services.resolve_ip_for_localhost`) unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, the switch Ray uses on
macOS and Windows to keep a single-machine cluster on loopback. With it, the GCS, raylet, workers, the two
agents and both Prometheus endpoints bind 127.0.0.1; without it they bind `::`, 0.0.0.0 or the machine's
address. Joining a cluster (`--ray-address`) must not set it: the other nodes stream results back to this
driver, so it needs a routable address, and the cluster belongs on a private network (see the README).

This module imports neither ray nor gradio: the front end calls it before it imports ray.
"""

import os
import secrets
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Folders a running instance serves files from: Gradio's default cache and the app's own storage root
# (ui/storage.py's ROOT; repeated here so that the worker side never imports ui/, which imports gradio).
SERVED_ROOTS = (Path(tempfile.gettempdir()) / "gradio", Path(tempfile.gettempdir()) / "cfg-explorer")

AUTH_MODE = "RAY_AUTH_MODE"
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
TOKEN = "RAY_AUTH_TOKEN"
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_env(address: str | None = None) -> dict[str, str]:
    """The environment `ray.init` must see (set before it runs; Ray's child processes inherit it)."""
    env = {AUTH_MODE: "token"}
    if address is None:
        env[SINGLE_MACHINE] = "0"
    return env


def apply_env(address: str | None = None) -> None:
    """Set `init_env`, refusing an operator's setting that would turn token auth off rather than override it."""
    mode = os.environ.get(AUTH_MODE)
    if mode is not None and mode.lower() != "token":
        raise ValueError(
            f"{AUTH_MODE}={mode}: --backend ray keeps Ray's token authentication on; unset {AUTH_MODE} "
            "or set it to 'token'"
        )
    os.environ.update(init_env(address))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing reports home from a teaching demo
    if mode is None and "ray._raylet" in sys.modules:
        # Ray caches its config (auth mode included) when imported; a driver that imported ray first would
        # otherwise start a token-auth GCS and then call it without the token. This is Ray's own refresh.
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()
    constants = sys.modules.get("ray._private.ray_constants")
    if address is None and constants is not None:
        # Ray reads the switch once, when it is imported; `services.get_node_ip_address` reads this module
        # attribute on each call, so a driver that imported ray first (a test session) still stays on loopback.
        constants.ENABLE_RAY_CLUSTER = False


def token_path() -> Path:
    """Where Ray reads the cluster token: `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token` (Ray's default)."""
    custom = os.environ.get(TOKEN_PATH)
    return Path(custom).expanduser().resolve() if custom else Path.home().resolve() / ".ray" / "auth_token"


def served_roots(extra: Iterable[Path] = ()) -> list[Path]:
    """The repository and every folder the front end may serve files from."""
    roots = [REPO_ROOT, *SERVED_ROOTS, *extra]
    if os.environ.get("GRADIO_TEMP_DIR"):
        roots.append(Path(os.environ["GRADIO_TEMP_DIR"]))
    return [Path(r).expanduser().resolve() for r in roots]


def ensure_token_file(create: bool = True, served: Iterable[Path] = ()) -> Path | None:
    """Check the token file's place and permissions; make one (mode 0600) for a new local cluster.

    Ray writes its own token with the process umask (0644 here: every local user could read it), so
    the file is made here first, readable by its owner only. A token given inline (`RAY_AUTH_TOKEN`) needs no
    file and returns None. `create=False` is for joining a cluster: its token must be copied here first.
    """
    if os.environ.get(TOKEN):
        return None
    path = token_path()
    for root in served_roots(served):
        if path.is_relative_to(root):
            raise ValueError(
                f"{TOKEN_PATH}={path} lies under {root}, which is in the repository or served to the page's "
                "visitors; keep the Ray token elsewhere (default ~/.ray/auth_token)"
            )
    if not path.exists():
        if not create:
            raise ValueError(
                f"no Ray token at {path}: copy the cluster's token there (`ray get-auth-token` on the head node), "
                f"or point {TOKEN_PATH} at it"
            )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))  # what Ray's own generator writes: 256 random bits, hex
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)  # the secret that guards the cluster; owner-only, as ssh keys
    return path


def init_kwargs(address: str | None = None) -> dict:
    """Keyword arguments for `ray.init`, after setting the environment and the token file they depend on.

    A local cluster (`address=None`) binds every process to loopback and starts no dashboard (its job API
    runs code); joining one only checks the token. Use: `ray.init(address, num_cpus=..., **init_kwargs(address))`.
    """
    apply_env(address)
    ensure_token_file(create=address is None)
    if address is not None:
        return {}
    return {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}


def serve_start_kwargs() -> dict:
    """Keyword arguments for `serve.start`: no HTTP proxy at all, since the front end calls replicas by handle.

    Serve's proxy (127.0.0.1:8000 by default) would answer anyone on the machine without Ray's token.
    """
    return {"proxy_location": "Disabled"}
