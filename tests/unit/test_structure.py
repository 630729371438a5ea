"""The pipeline's shape: no import cycle among its modules, the guidance package never imports the request,
no function over 60 lines, and the modes table assembled from one file per mode."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipeline"
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The pipeline modules `path` imports at import time (not under `if TYPE_CHECKING:` nor inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pipeline")}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            if target.startswith("pipeline"):
                found.add(target)
                found |= {f"{target}.{alias.name}" for alias in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PIPELINE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else path + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def _parents_removed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A submodule importing its own package's __init__ (`from . import x`) is not a cycle worth failing on."""
    return {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}


def test_no_import_cycle_in_pipeline():
    cycle = _cycle(_parents_removed(_graph()))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_guidance_never_imports_the_request():
    """In a fresh interpreter: importing the guidance package loads neither the request nor the loop."""
    code = ("import sys, pipeline.guidance; "
            "print(sorted(m for m in sys.modules if m in ('pipeline.request', 'pipeline.loop')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_function_over_60_lines_in_pipeline():
    long = []
    for path in sorted(PIPELINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_the_table_is_one_file_per_mode():
    from pipeline.guidance import GUIDANCE_MODES

    files = sorted(p.stem for p in (PIPELINE / "guidance" / "modes").glob("*.py") if not p.stem.startswith("_"))
    assert sorted(GUIDANCE_MODES) == files


@pytest.mark.parametrize("name", ["cfg", "reversed", "negative_direction", "perp_neg", "cond_only", "uncond_only",
                                  "apg", "cfg_zero_star", "weighted"])
def test_a_mode_sees_only_its_own_fields(name):
    """Each mode's callables run on its `Params` alone: reading any other field of the request would raise."""
    import torch

    from pipeline.guidance import GUIDANCE_MODES, RUN_FIELDS
    from pipeline.request import GenerationRequest

    mode = GUIDANCE_MODES[name]
    request = GenerationRequest(prompt="a", negative_prompt="b", mode=name, steps=4,
                                weighted_prompts=(("a", 3.0),) if name == "weighted" else ())
    params = mode.params_of(request)
    assert set(params._values) == set(mode.fields)
    parts = mode.needs(5.0, params)
    preds = {part: torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(k)) for k, part in enumerate(parts)}
    assert mode.combine(preds, 5.0, params, mode.new_state(params)).shape == (1, 4, 8, 8)
    mode.zero_steps(params)
    assert mode.check(mode.params_of(request, RUN_FIELDS)) is None
    with pytest.raises(AttributeError, match="declared fields"):
        params.guidance_scale  # noqa: B018
