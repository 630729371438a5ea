"""The library installs: `pip install .` (as from the repository's URL) and `pip install -e .` give a working
`import pipeline` in a fresh virtual environment, from a folder outside the repository; and pyproject.toml's
declared dependencies agree with the requirements files that CI and the README install from (issue 18).

The fresh environments need no network: they see this interpreter's installed packages through a .pth file,
and pip installs only the project itself (`--no-deps --no-build-isolation`).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
APP_ONLY = {"gradio", "gradio-client"}  # requirements.txt's lines for the app, not for the library


def requirements(name: str) -> set[str]:
    """A requirements file's own requirements (not the files it includes), normalised."""
    lines = (line.split(" #")[0].strip() for line in (ROOT / name).read_text().splitlines())
    return {normal(line) for line in lines if line and not line.startswith(("#", "-r"))}


def normal(text: str) -> str:
    requirement = Requirement(text)
    name = requirement.name.lower().replace("_", "-")
    marker = f"; {requirement.marker}" if requirement.marker else ""
    return f"{name}{','.join(sorted(str(s) for s in requirement.specifier))}{marker}"


def names(requirements_: set[str]) -> set[str]:
    return {Requirement(r).name.lower().replace("_", "-") for r in requirements_}


def test_declared_dependencies_agree_with_the_requirements_files():
    library = {normal(r) for r in PYPROJECT["dependencies"]}
    app = {normal(r) for r in PYPROJECT["optional-dependencies"]["app"]}
    test = {normal(r) for r in PYPROJECT["optional-dependencies"]["test"]}
    assert library | app == requirements("requirements.txt")
    assert names(app) == APP_ONLY and not names(library) & APP_ONLY  # the library never needs gradio
    assert test == requirements("requirements-test.txt")
    assert "torch" in names(library)


def test_every_library_package_is_declared():
    """pyproject lists the packages by name (presets/ is mapped in as one), so a new subpackage must be added."""
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pipeline").rglob("__init__.py")}
    assert on_disk | {"pipeline.preset_files"} == declared


def fresh_venv(where: Path) -> Path:
    """A venv that sees this interpreter's packages (torch, diffusers...) but not the repository."""
    venv.create(where, with_pip=False, system_site_packages=True)
    python = where / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()]
    (Path(purelib) / "_test_deps.pth").write_text("\n".join(ours) + "\n")
    return python


def checkout(into: Path) -> Path:
    """The repository's files as a clone has them (no venvs, caches or build output), so the install builds
    from what a `pip install git+URL` would fetch and writes nothing into the working tree."""
    ignore = shutil.ignore_patterns(".git", ".venv", "venv", "__pycache__", ".pytest_cache", "build", "dist",
                                    "*.egg-info", ".gradio", "outputs", "*.png")
    return Path(shutil.copytree(ROOT, into, ignore=ignore))


SMOKE = """
import pipeline, sys
from pipeline.presets import load_presets
pipe = pipeline.toy_pipeline()
request = pipeline.GenerationRequest(prompt="red circle", steps=2, seeds=(1,), width=64, height=64)
final = list(pipeline.generate(pipe, request))[-1]
print(pipeline.__file__)
print(len(load_presets()))
print(final.images[0].size)
print("gradio" in sys.modules)
"""


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_the_library_installs_into_a_fresh_venv_and_runs_outside_the_repository(tmp_path, editable):
    source = checkout(tmp_path / "src")
    python = fresh_venv(tmp_path / "venv")
    install = [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    done = subprocess.run([*install, *(["-e"] if editable else []), str(source)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    elsewhere = tmp_path / "notebook"
    elsewhere.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run([python, "-c", SMOKE], capture_output=True, text=True, cwd=elsewhere, env=env)
    assert run.returncode == 0, run.stderr
    where, presets, size, gradio = run.stdout.split("\n")[:4]
    assert Path(where).is_relative_to(source if editable else tmp_path / "venv"), where
    assert int(presets) == len(list((ROOT / "presets").glob("*.toml")))
    assert size == "(64, 64)" and gradio == "False"


def test_the_readme_says_how_to_get_the_cpu_wheel():
    """Issue 18: on Linux without a GPU a plain `pip install torch==2.13.0` pulls the CUDA build."""
    readme = (ROOT / "README.md").read_text()
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in readme


def test_public_names_load_on_first_use_whatever_was_imported_before():
    """pipeline's names load lazily (so `app.py --help` needs no torch); `whatif` is both a submodule and the
    function it defines, and must stay the function after the submodule is imported first."""
    probe = ("import types, pipeline.whatif\nimport pipeline\nfrom pipeline import whatif\n"
             "assert not isinstance(whatif, types.ModuleType) and callable(whatif), whatif\n"
             "assert all(getattr(pipeline, name) is not None for name in pipeline.__all__)\n"
             "assert pipeline.presets.load_presets\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
