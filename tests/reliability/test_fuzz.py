"""Hostile payloads at every public endpoint: each gets an error naming its field, or is a valid request;
the server keeps serving, no request holds it, and the next valid job succeeds.

Payloads are generated from the server's own API description: for every parameter of every endpoint, values
of the wrong type, NaN and infinities, huge numbers, unknown choices, 100 kB and control-character text,
lone surrogates, hostile files and images, and hostile PNG metadata. One parameter changes per payload.
"""

from __future__ import annotations

import collections
import io
import json
import math
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .conftest import QUICK

HOSTILE_NUMBERS = ["7", "abc", math.nan, math.inf, -math.inf, 1e308, -1e308, 2**70, True, [1], {"a": 1}, 2.5, -3]
HOSTILE_TEXT = [123, 1.5, ["an", "otter"], {"a": "b"}, "x" * 100_000, "a\x00b\x1b[31m\x07 control",
                "lone \ud800 surrogate", "\u202eright-to-left", "🦦" * 2000]
HOSTILE_CHOICES = ["bogus", 5, "", ["cfg"], "CFG", "x" * 100_000]
HOSTILE_FLAGS = ["false", 1, "yes", [True], {"on": True}]
MAX_HOLD_SECONDS = 1.0  # no request may keep another client's /gradio_api/info waiting longer


def png_bytes(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=save.pop("format", "PNG"), **save)
    return buffer.getvalue()


def png_with_text(chunks: dict[str, str]) -> bytes:
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    return png_bytes(Image.new("RGB", (8, 8)), pnginfo=info)


def huge_header_png(side: int = 12000) -> bytes:
    """A valid PNG header claiming side x side pixels, with one row of data: a few hundred bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(side + 1)))
            + chunk(b"IEND", b""))


def hostile_images() -> dict[str, bytes]:
    gif = io.BytesIO()
    frames = [Image.new("P", (32, 32), i) for i in range(3)]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    valid = png_bytes(Image.new("RGB", (64, 64), (200, 30, 30)))
    return {
        "truncated.png": valid[:60],
        "not-an-image.png": b"<html>not an image</html>",
        "empty.png": b"",
        "huge-header.png": huge_header_png(),
        "animated.gif": gif.getvalue(),
        "cmyk.jpg": png_bytes(Image.new("CMYK", (64, 64), (0, 200, 200, 0)), format="JPEG"),
        "grey16.png": png_bytes(Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16))),
        "palette.png": png_bytes(Image.new("RGB", (64, 64), "blue").convert("P")),
        "one-pixel.png": png_bytes(Image.new("RGB", (1, 1), "green")),
    }


def hostile_pngs() -> dict[str, bytes]:
    settings = {"version": 1, "seed": 1, "model": "tiny", "request": {"prompt": "an otter", "seeds": [1]}}
    return {
        "quadratic.png": png_with_text({"parameters": "a " * 24_000}),
        "nested.png": png_with_text({"cfg_explorer": "[" * 50_000 + "]" * 50_000}),
        "huge-json.png": png_with_text({"cfg_explorer": json.dumps({**settings, "pad": "x" * 70_000})}),
        "bad-json.png": png_with_text({"cfg_explorer": "{not json"}),
        "bad-value.png": png_with_text({"cfg_explorer": json.dumps({**settings, "request": {"prompt": "a", "steps": 10**9}})}),
        "unknown-key.png": png_with_text({"cfg_explorer": json.dumps({**settings, "request": {"prompt": "a", "evil": 1}})}),
        "no-settings.png": png_with_text({}),
        "a1111-bad-size.png": png_with_text({"parameters": "a cat\nSteps: 20, Sampler: Euler, Seed: 1, Size: 9x"}),
    }


def labels_by_parameter(server) -> dict[str, list[str | None]]:
    """Each endpoint's input labels, in API order, from the page's config (the API names images `parameter_N`)."""
    config = server.http.get(f"{server.url}/config").json()
    components = {c["id"]: c for c in config["components"]}
    labels = {}
    for dependency in config["dependencies"]:
        name = dependency.get("api_name")
        if name:
            inputs = [components[i] for i in dependency["inputs"] if components[i]["type"] != "state"]
            labels[name] = [c["props"].get("label") for c in inputs]
    return labels


def hostile_values(parameter: dict, files: dict[str, dict]) -> list:
    kind = parameter["python_type"]["type"]
    if kind.startswith("Literal"):
        return HOSTILE_CHOICES
    if kind in ("float", "int"):
        return HOSTILE_NUMBERS
    if kind == "bool":
        return HOSTILE_FLAGS
    if kind == "str":
        return HOSTILE_TEXT
    if kind == "filepath":
        probes = [
            {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}},
            {"path": "../../../../etc/passwd", "meta": {"_type": "gradio.FileData"}},
            {"path": "/", "meta": {"_type": "gradio.FileData"}},
            {"url": "http://169.254.169.254/latest/meta-data", "meta": {"_type": "gradio.FileData"}},
            "/etc/passwd", 5, {"path": None},
        ]
        return probes + list(files.values())
    raise AssertionError(f"no hostile values for a {kind} parameter ({parameter['parameter_name']})")


def base_values(server, api_name: str, image: dict) -> dict:
    """A valid, quick request for each endpoint: the fuzz changes one parameter of it at a time."""
    names = {p["parameter_name"] for p in server.parameters(api_name)}
    values = {k: v for k, v in QUICK.items() if k in names}
    if api_name in ("invert", "error_curve"):
        values.update(image=image, steps=2) if api_name == "invert" else values.update(image=image, curve_steps="2")
        values = {k: v for k, v in values.items() if k in names}
    if api_name == "sweep":
        values.update(x_values="1, 2", y_values="1")
    return values


class Monitor:
    """Another client: asks for /gradio_api/info every 0.2 s and records how long each answer took."""

    def __init__(self, server) -> None:
        self.server, self.latencies, self.windows, self._stop = server, [], [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.wait(0.2):
                start = time.perf_counter()
                client.get(f"{self.server.url}/gradio_api/info").raise_for_status()
                self.latencies.append(time.perf_counter() - start)
                self.windows.append((start, time.perf_counter()))

    def __enter__(self) -> Monitor:
        httpx.get(f"{self.server.url}/gradio_api/info", timeout=30)  # the first answer builds and caches the schema
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_hostile_payloads_get_named_errors_and_the_server_keeps_serving(server):
    info = server.info()["named_endpoints"]
    labels = labels_by_parameter(server)
    files = {name: server.upload(name, content) for name, content in {**hostile_images(), **hostile_pngs()}.items()}
    outcomes: collections.Counter = collections.Counter()
    failures, tried, sent = [], 0, []
    deadline = time.monotonic() + 2400  # bounded: the whole fuzz, whatever the machine (about 4 min when quiet)
    controls = {p["parameter_name"] for p in info["/generate"]["parameters"]}
    with Monitor(server) as monitor:
        for endpoint, description in sorted(info.items()):
            api_name = endpoint.lstrip("/")
            parameters = description["parameters"]
            # a fresh upload per endpoint, as the page uploads when a user picks a file: the server's bounded cache
            # (ui/storage.py, newest 1,000 files) may prune an upload made 1,000 outputs earlier
            image = server.upload("valid.png", png_bytes(Image.new("RGB", (64, 64), (200, 30, 30))))
            base = base_values(server, api_name, image)
            for index, parameter in enumerate(parameters):
                label = labels[api_name][index]
                values = hostile_values(parameter, files)
                if api_name == "generate" and parameter["python_type"]["type"] != "filepath":
                    values = values[index % 2::2]  # every hostile value, over every other parameter
                elif parameter["parameter_name"] in controls:
                    # the Explore controls reach sweep, share_link and describe_schedule through the same
                    # components as generate: a sample there, fuzzed at length at generate
                    values = values[index % 3::6] if index % 3 == 0 else []
                for value in values:
                    assert time.monotonic() < deadline, f"the fuzz ran out of time after {tried} payloads"
                    payload = server.payload(api_name, **{**base, parameter["parameter_name"]: value})
                    began = time.perf_counter()
                    kind, message = server.call(api_name, payload, timeout=60)
                    sent.append((began, time.perf_counter(), f"{api_name}.{parameter['parameter_name']}="
                                                             f"{str(value)[:30]!r}", api_name, payload))
                    tried += 1
                    if kind == "complete":
                        outcomes["valid"] += 1
                    elif kind == "error" and label and isinstance(message, str) and f"{label}:" in message[:300]:
                        outcomes["named error"] += 1  # the sweep tab says "Explore settings: <label>: ..."
                    else:
                        outcomes["unnamed"] += 1
                        failures.append(f"{api_name}.{parameter['parameter_name']} ({label}) = {str(value)[:40]!r}: "
                                        f"{kind} {str(message)[:160]!r}")
    print(f"\nfuzz: {tried} payloads over {len(info)} endpoints: {dict(outcomes)}; /gradio_api/info answered "
          f"{len(monitor.latencies)} times meanwhile, slowest {max(monitor.latencies):.3f} s")
    assert tried >= 150
    assert not failures, f"{len(failures)} of {tried} payloads got no error naming their field:\n" + "\n".join(failures[:40])
    assert monitor.latencies
    # A slow answer may be a request that holds the server, or a busy machine starving both processes for a
    # moment. A hold is a property of the request, so it comes back: replay every payload that was in flight
    # during a slow answer, alone, twice, and fail on any that is slow again both times.
    suspects = {what: (api, payload) for a, b in monitor.windows if b - a >= MAX_HOLD_SECONDS
                for start, end, what, api, payload in sent if start < b and end > a}
    held = []
    for what, (api, payload) in list(suspects.items())[:20]:
        waits = []
        for _ in range(2):
            with Monitor(server) as replay:
                server.call(api, payload, timeout=60)
                time.sleep(0.5)  # at least two answers of the monitor per replay
            waits.append(max(replay.latencies, default=0.0))
        if min(waits) >= MAX_HOLD_SECONDS:
            held.append((what, waits))
    print(f"  slow answers: {sum(b - a >= MAX_HOLD_SECONDS for a, b in monitor.windows)}; payloads in flight "
          f"replayed: {len(suspects)}; held the server on replay: {held}")
    assert not held, f"these requests held the server over {MAX_HOLD_SECONDS} s, twice: {held}"
    kind, outputs = server.call("generate", server.payload("generate", **QUICK))
    assert kind == "complete" and "Done" in outputs[1], outputs


@pytest.mark.parametrize("name", ["truncated.png", "not-an-image.png", "huge-header.png"])
def test_unusable_images_are_refused_naming_the_start_image(server, name):
    upload = server.upload(name, hostile_images()[name])
    kind, message = server.call("generate", server.payload("generate", **QUICK, init_image=upload))
    assert kind == "error" and message.startswith("Start image:"), message


@pytest.mark.parametrize("name", ["animated.gif", "cmyk.jpg", "grey16.png", "palette.png", "one-pixel.png"])
def test_odd_but_real_images_start_a_run(server, name):
    upload = server.upload(name, hostile_images()[name])
    kind, outputs = server.call("generate", server.payload("generate", **QUICK, init_image=upload, strength=0.5))
    assert kind == "complete" and "Done" in outputs[1], outputs
