"""The shape of `ui/` (issue 20): no import cycle, no file over 400 lines, no function over 60 lines outside pure
layout, every error through the one conversion (`ui.fields.refused` / `gr_error`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

UI = Path(__file__).resolve().parents[2] / "ui"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
# Pure layout: one component after another, where splitting would only scatter the page's order.
LAYOUT_FUNCTIONS = {"build_explore_tab"}


def module_name(path: Path) -> str:
    parts = path.relative_to(UI.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The `ui` modules that `path` imports, at run time or for type checking alike (a cycle either way)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import render` imports ui.render; `from .fields import refused`, ui.fields
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {name for name in found if name in modules and name != module_name(path)}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in `graph` (as the modules along it), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def ui_files() -> list[Path]:
    return sorted(UI.rglob("*.py"))


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}})
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_ui():
    modules = {module_name(path) for path in ui_files()}
    graph = {module_name(path): imports_of(path, modules) for path in ui_files()}
    # ui/explore/*.py import their package's siblings, never the package itself: that would be a cycle too
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_whatif_panel_does_not_depend_on_explore():
    modules = {module_name(path) for path in ui_files()}
    assert not {m for m in imports_of(UI / "whatif.py", modules) if m.startswith("ui.explore")}


@pytest.mark.parametrize("path", ui_files(), ids=lambda p: str(p.relative_to(UI)))
def test_no_file_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_FILE_LINES


def test_no_function_over_60_lines_outside_layout():
    long = [f"{path.relative_to(UI)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in ui_files() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in LAYOUT_FUNCTIONS
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long


def test_every_error_goes_through_the_one_conversion():
    """`gr.Error(...)` is made only in ui/fields.py (`Refused`, `gr_error`): elsewhere it bypasses the labels, the
    server's one-line log and the field the page marks."""
    direct = [f"{path.relative_to(UI)}:{node.lineno}" for path in ui_files() if path.name != "fields.py"
              for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Error"]
    assert not direct
