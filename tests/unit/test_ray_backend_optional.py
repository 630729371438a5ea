"""Ray is optional: without `--backend ray` nothing imports it, and the flags that need it say so."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_without_the_ray_backend_nothing_imports_ray():
    code = ("import sys, app, ui, ui.explore.run, ui.sweep_tab, ui.whatif, pipeline.loop, pipeline.denoiser; "
            "app.parse_args(['--model', 'toy']); assert 'ray' not in sys.modules, 'ray was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("argv, message", [
    (["--replicas", "2"], "--replicas and --ray-address need --backend ray"),
    (["--ray-address", "auto"], "--replicas and --ray-address need --backend ray"),
    (["--backend", "ray", "--replicas", "0"], "--replicas must be at least 1, got 0"),
])
def test_ray_flags_are_checked(argv, message, capsys):
    import app

    with pytest.raises(SystemExit):
        app.parse_args(argv)
    assert message in capsys.readouterr().err


def test_the_ray_backend_flags_parse():
    import app

    args = app.parse_args(["--backend", "ray", "--replicas", "3", "--ray-address", "10.0.0.1:6379"])
    assert (args.backend, args.replicas, args.ray_address) == ("ray", 3, "10.0.0.1:6379")
    assert app.parse_args([]).backend == "local"
