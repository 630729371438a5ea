"""Mutation testing of the math, on demand (not in CI): `python tools/mutation.py`.

Uses mutmut (PyPI; `pip install -r requirements-mutation.txt`). It copies the repository to a scratch folder,
changes the code below one small bug at a time (a `+` for a `-`, a constant nudged, an argument dropped...),
and runs the fast unit and parity tests that call the changed function. A mutant the tests still pass on
"survived": either the tests miss that bug, or the change means the same thing (an equivalent mutant).
Prints the score (killed / tested) and every survivor with its diff.

The scratch folder (default `build/mutation`, git-ignored) keeps mutmut's cache: a second run re-tests only
what changed. `--fresh` starts over.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

# The math under test: a module's every function ("*"), or only the named ones. Update this when code moves.
MATH: dict[str, tuple[str, ...]] = {
    "pipeline/guidance/base.py": ("*",),
    "pipeline/guidance/combine.py": ("*",),
    "pipeline/guidance/modes/*.py": ("*",),  # every mode's file: its formula, needs, combine, checks
    "pipeline/schedules.py": ("*",),
    "pipeline/decompose.py": ("*",),
    "pipeline/schedulers.py": ("*",),
    # the loop's per-step plan, its combination of predictions, and the statistics each step reports
    "pipeline/loop.py": ("_plan", "_combine", "_lane_step"),
    # what-if's recombination and x0 coefficients, and a fork's path and name
    "pipeline/whatif.py": ("whatif", "_x0_coefficients", "forked_request", "branch_name"),
}

# The fast tests that cover that math (about a minute on 2 CPU cores). mutmut runs, for each mutant, only
# those of them that call the mutated function.
TESTS: tuple[str, ...] = (
    "tests/unit/test_guidance.py",
    "tests/unit/test_lab.py",
    "tests/unit/test_loop.py",
    "tests/unit/test_sweep.py",
    "tests/parity/test_parity.py",
    "tests/parity/test_lab_parity.py",
    "tests/parity/test_weighted_parity.py",
    "tests/unit/test_whatif.py",  # piecewise guidance: the loop's plan reads each step's settings (request.forks)
)


def mutant_patterns() -> list[str]:
    """mutmut names a mutant `package.module.x_<function>__mutmut_<n>` (methods: `xǁClassǁmethod`)."""
    patterns = []
    for path, functions in MATH.items():
        module = path.removesuffix(".py").replace("/", ".")
        patterns += [f"{module}.*" if f == "*" else f"{module}.x_{f}__mutmut_*" for f in functions]
    return patterns


def write_config(scratch: Path) -> None:
    pyproject = (scratch / "pyproject.toml").read_text()
    files = ", ".join(f'"{path}"' for path in MATH)
    tests = ", ".join(f'"{test}"' for test in TESTS if (scratch / test).exists())
    pyproject = re.sub(r"\n\[tool\.mutmut\][^\[]*", "\n", pyproject)
    pyproject += (
        "\n[tool.mutmut]\n"
        'source_paths = ["pipeline"]\n'
        f"only_mutate = [{files}]\n"
        f"pytest_add_cli_args_test_selection = [{tests}]\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x"]\n'
    )
    tomllib.loads(pyproject)  # fail here, not inside mutmut, if the config is malformed
    (scratch / "pyproject.toml").write_text(pyproject)


def copy_repo(scratch: Path) -> None:
    """The tracked and untracked-but-not-ignored files, as the tests see them; mutmut's own output is kept."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True,
        capture_output=True, text=True,
    ).stdout.splitlines()
    for name in listed:
        source = ROOT / name
        if source.is_file():
            target = scratch / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists() or target.read_bytes() != source.read_bytes():
                shutil.copyfile(source, target)


def mutmut(scratch: Path, *args: str, capture: bool = False) -> str:
    command = [str(Path(sys.executable).with_name("mutmut")), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=scratch, env=env, text=True, capture_output=capture)
    if done.returncode not in (0, 1) or (capture and done.returncode):
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode})\n{done.stdout or ''}{done.stderr or ''}")
    return done.stdout or ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=ROOT / "build" / "mutation")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--fresh", action="store_true", help="forget mutmut's cached results")
    parser.add_argument("--only", default="*", help="test only the MATH entries whose module matches, e.g. "
                        "'pipeline.schedules'")
    args = parser.parse_args()

    scratch = args.scratch.resolve()
    if args.fresh and scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    copy_repo(scratch)
    write_config(scratch)

    patterns = [p for p in mutant_patterns() if fnmatch.fnmatch(p.rsplit(".", 1)[0].rsplit(".x_", 1)[0], args.only)]
    if not patterns:
        raise SystemExit(f"--only {args.only!r} matches no module in MATH")
    mutmut(scratch, "run", "--max-children", str(args.max_children), *patterns)

    statuses: dict[str, str] = {}
    for line in mutmut(scratch, "results", "--all", "true", capture=True).splitlines():
        name, _, status = line.strip().rpartition(": ")
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            statuses[name] = status
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    tested = killed + counts.get("survived", 0) + counts.get("no tests", 0) + counts.get("suspicious", 0)
    print("\n" + ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())))
    print(f"mutation score: {killed}/{tested} killed = {100 * killed / max(tested, 1):.1f}%")
    for name, status in sorted(statuses.items()):
        if status not in ("killed", "timeout"):
            print(f"\n--- {status}: {name}")
            print(mutmut(scratch, "show", name, capture=True).strip())


if __name__ == "__main__":
    main()
