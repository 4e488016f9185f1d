"""The layers stay honest: no import cycle among harness's packages, counting imports inside functions
and under ``TYPE_CHECKING``, and the pure gate imports nothing above it (read from the source, statically)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "harness"


def _unit(module: str) -> str:
    """``harness.gate.verdict`` -> ``harness.gate``; top-level modules are their own unit."""
    return ".".join(module.split(".")[:2])


def _module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> every harness module it imports, wherever the import statement is."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = _module_of(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[module] |= {n for n in names if n.startswith("harness.") and _exists(n)}
    return graph


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def test_no_import_cycle_among_harness_packages() -> None:
    units: dict[str, set[str]] = defaultdict(set)
    for module, targets in import_graph().items():
        if module == "harness":
            continue  # the package map re-exports lazily by name
        units[_unit(module)] |= {_unit(t) for t in targets if _unit(t) != _unit(module)}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(unit: str) -> None:
        state[unit] = 1
        path.append(unit)
        for target in sorted(units.get(unit, ())):
            if state.get(target) == 1:
                cycle = [*path[path.index(target):], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[unit] = 2

    for unit in sorted(units):
        if unit not in state:
            visit(unit)


@pytest.mark.parametrize("pure", ["harness.gate", "harness.diagnosis"])
def test_the_gate_imports_nothing_above_it(pure: str) -> None:
    graph = import_graph()
    seen, todo = set(), [m for m in graph if _unit(m) == pure]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph.get(module, ())
    reached = {_unit(m) for m in seen}
    allowed = {"harness.gate", "harness.stats", "harness.records", "harness.detectors", "harness.errors", pure}
    assert reached <= allowed, f"{pure} reaches {sorted(reached - allowed)}"


def test_moegate_works_without_pytest_hypothesis_or_nox() -> None:
    """They are extras: the CLI and the Python API import none of them (pytest loads the plugin itself)."""
    code = (
        "import sys\n"
        "for name in ('pytest', 'hypothesis', 'nox', '_pytest'): sys.modules[name] = None  # importing them fails\n"
        "import harness, harness.api, harness.runner, harness.reports, harness.store\n"
        "from harness.cli import main\n"
        "main(['suites', 'list'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wikitext2" in done.stdout
