"""On a ZeroGPU Space, `spaces.GPU` wraps the handlers that hold the GPU. Outside a Space the real package
passes calls through, which would test nothing; so a stand-in that behaves like ZeroGPU's wrappers (it runs
the handler elsewhere, a thread here, and relays each yielded update) replaces it, and the app is driven
through it: generation must still stream, Stop must still reach the run, and each handler must ask for a
duration computed from its request rather than a fixed one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import json, queue, sys, threading, time, types

durations = []

def GPU(task=None, *, duration=None, size=None):
    """Like spaces.zero.decorator.GPU on ZeroGPU: the handler runs elsewhere and its yields are relayed."""
    def wrap(fn):
        def relay(*args, **kwargs):
            durations.append(duration(*args, **kwargs) if callable(duration) else duration)
            updates = queue.Queue()
            def worker():
                try:
                    for update in fn(*args, **kwargs):
                        updates.put(("update", update))
                    updates.put(("done", None))
                except BaseException as exc:
                    updates.put(("error", exc))
            threading.Thread(target=worker, daemon=True).start()
            while True:
                kind, value = updates.get(timeout=120)
                if kind == "done":
                    return
                if kind == "error":
                    raise value
                yield value
        relay.zerogpu = None
        return relay
    return wrap(task) if callable(task) else wrap

sys.modules["spaces"] = types.SimpleNamespace(GPU=GPU)

import torch
torch.set_num_threads(1)
from pipeline import tiny_pipeline
from ui import Handlers
from ui.handlers import request_gpu_seconds, spaces
from ui.controls import CONTROL_NAMES, CONTROLS
from ui.explore import GENERATE_OUTPUTS, Explore

assert spaces is sys.modules["spaces"], "ui.handlers did not pick up the spaces package"
handlers = Explore(Handlers(tiny_pipeline(), model_name="tiny"))
defaults = dict(prompt="an otter", mode="cfg", guidance_scale=7.5, seed=1, num_seeds=2, scheduler="euler",
                width=64, height=64, preview="linear")

def values(**changes):
    settings = {**defaults, **changes}
    return [settings.get(name) for name in CONTROL_NAMES]

status = GENERATE_OUTPUTS.index("status")
updates = list(handlers.generate(*values(steps=3)))
result = {"streamed": len(updates), "last_status": updates[-1][status]}

# Stop, from another thread, by the run id of the stream's first update, while the relay runs the handler
run_id = GENERATE_OUTPUTS.index("run_id")
stream = handlers.generate(*values(steps=150, width=256, height=256))
first = next(stream)
seen = []
for update in stream:
    seen.append(update[status])
    if sum("step " in str(s) for s in seen) == 2:
        threading.Thread(target=handlers.stop, args=(first[run_id],)).start()
result["stopped_status"] = seen[-1]
result["durations"] = durations
from pipeline import GenerationRequest
result["expected"] = [request_gpu_seconds(GenerationRequest(prompt="an otter", steps=3, seeds=(1, 2), width=64, height=64)),
                      request_gpu_seconds(GenerationRequest(prompt="an otter", steps=150, seeds=(1, 2), width=256, height=256))]
print("RESULT " + json.dumps(result))
'''


def test_generation_streams_and_stop_works_through_a_zerogpu_style_wrapper(tmp_path):
    script = tmp_path / "zerogpu.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                               "TMPDIR": str(tmp_path)})
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, f"the script failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    result = json.loads(line[len("RESULT "):])
    assert result["streamed"] == 1 + 3 and "Done" in result["last_status"]  # "Starting", then each step
    assert "Stopped at step" in result["stopped_status"] and "/150" in result["stopped_status"]
    # one reservation per run, sized to its request: a bigger run asks for more, neither for a fixed 180 s
    assert result["durations"] == result["expected"]
    assert result["durations"][0] < result["durations"][1]


def test_gpu_seconds_grow_with_steps_seeds_and_size():
    from pipeline import GenerationRequest
    from ui.handlers import GPU_MAX_SECONDS, gpu_seconds, request_gpu_seconds

    small = GenerationRequest(prompt="a", steps=10, seeds=(1,), width=512, height=512)
    assert request_gpu_seconds(small) < request_gpu_seconds(GenerationRequest(prompt="a", steps=20, seeds=(1,),
                                                                              width=512, height=512))
    assert request_gpu_seconds(small) < request_gpu_seconds(GenerationRequest(prompt="a", steps=10, seeds=(1, 2),
                                                                              width=512, height=512))
    assert request_gpu_seconds(small) < request_gpu_seconds(GenerationRequest(prompt="a", steps=10, seeds=(1,),
                                                                              width=1024, height=1024))
    # 30 steps, 4 seeds, 1024 px under CFG: 240 UNet image passes at about 0.15 s each, plus the overhead
    typical = GenerationRequest(prompt="a", steps=30, seeds=(1, 2, 3, 4), width=1024, height=1024)
    assert 40 < request_gpu_seconds(typical) < 120
    assert gpu_seconds(10**9, 2048, 2048) == GPU_MAX_SECONDS


@pytest.mark.parametrize("module", ["ui.explore.run", "ui.sweep_tab", "ui.invert_tab"])
def test_every_gpu_handler_takes_a_computed_duration(module):
    """No handler asks ZeroGPU for a fixed duration: each `@gpu(...)` gets a function of its arguments."""
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    uses = [line.strip() for line in source.splitlines() if line.strip().startswith("@gpu")]
    assert uses and all(use.startswith("@gpu(duration=lambda") for use in uses), uses
