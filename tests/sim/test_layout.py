"""The simulator is a library: no printing, no argv, no imports upward, no cycles inside."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SIM = Path(__file__).resolve().parents[2] / "src" / "scanstream" / "sim"
MODULES = sorted(SIM.glob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_sim_prints_nothing_and_parses_no_argv(path: Path) -> None:
    tree = _tree(path)
    calls = [
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    ]
    assert "print" not in calls
    attributes = {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert (
        "sys.argv" not in attributes
        and "sys.stdout" not in attributes
        and "sys.stderr" not in attributes
    )
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {"argparse", "cli", "scanstream.cli"} & imported
    assert not any(m.startswith(("..cli", "cli.")) for m in imported)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_sim_imports_at_module_level_only(path: Path) -> None:
    functions = [
        n for n in ast.walk(_tree(path)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    inner = [
        f"{f.name}:{n.lineno}"
        for f in functions
        for n in ast.walk(f)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    ]
    assert inner == []


def test_no_import_cycle_inside_sim() -> None:
    # Every relative import counts, TYPE_CHECKING ones included: the modules form a DAG.
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        graph[path.stem] = {
            (n.module or "").split(".")[0]
            for n in ast.walk(_tree(path))
            if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module
        }
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join(path + (module,))
        if module in done:
            return
        for dep in graph.get(module, ()):
            visit(dep, path + (module,))
        done.add(module)

    for module in graph:
        visit(module, ())
    assert {"chain", "metadata", "masters"} <= done
