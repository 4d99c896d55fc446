"""The package's layers, checked on its source: no import cycle, imports go downward only.

docs/architecture.md draws the layers; this file is what keeps the picture true. It reads the
source with :mod:`ast` (nothing is imported), so a cycle fails here even when it is hidden in
a function-level import or only shows under another import order.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
PACKAGE = "scanstream"

# Rank of each layer: a module may import modules of its own layer and of lower ranks only.
# Layers of the same rank are independent of each other unless listed in _SIDEWAYS.
_LAYERS: dict[str, int] = {
    "scanstream.exceptions": 0,
    "scanstream.models": 0,
    "scanstream._protocol": 1,
    "scanstream._transport": 2,
    "scanstream.publish": 3,
    "scanstream.subscribe": 3,
    "scanstream": 4,  # the package root: the public names of the core (publish, subscribe)
    "scanstream.admin": 5,
    "scanstream.sim": 5,
    "scanstream.writer": 5,
    "scanstream.web": 5,  # the browser view: reads through subscribe/ and admin/ listing
    "scanstream.cli": 6,
    "scanstream.__main__": 7,
}
# Allowed imports between layers of the same rank: (importer, imported).
_SIDEWAYS = {("scanstream.writer", "scanstream.admin"), ("scanstream.web", "scanstream.admin")}

# Function-level imports of the package's own modules that are there on purpose, never to hide
# a cycle: the package root resolves the writer's names on first use (so that `import
# scanstream` does not load h5py), and the command line imports each subcommand's module
# only when that subcommand runs (so that `scanstream server status` starts fast); `scanstream
# web` imports the web server (starlette, uvicorn) only when it serves.
_LAZY_IMPORTERS = {"scanstream", "scanstream.cli", "scanstream.cli.web"}
# Modules that may import h5py, and those that may do it only inside a function. Besides the
# writer, the simulated Lima detector writes real HDF5 frame files, as a detector does.
_H5PY_MODULE_LEVEL = ("scanstream.writer", "scanstream.sim.lima")
_H5PY_LAZY = {"scanstream.subscribe.images"}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> list[str]:
    """Modules of the package that ``from X import a, b`` in ``importer`` loads."""
    if node.level:
        base = importer.split(".")
        if not _is_package(importer):
            base.pop()
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in MODULES else target)
    return [t for t in out if t in MODULES]


class _Imports(ast.NodeVisitor):
    """Collects a module's imports, telling module-level ones from those inside functions."""

    def __init__(self, importer: str) -> None:
        self.importer = importer
        self.runtime: set[str] = set()
        self.lazy: set[str] = set()
        self.external_top: set[str] = set()
        self.external_lazy: set[str] = set()
        self._depth = 0
        self._type_checking = 0

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        self._type_checking += guarded
        for child in node.body:
            self.visit(child)
        self._type_checking -= guarded
        for child in node.orelse:
            self.visit(child)

    def _function(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def _add(self, internal: list[str], external: list[str]) -> None:
        if self._type_checking:
            return
        (self.lazy if self._depth else self.runtime).update(internal)
        (self.external_lazy if self._depth else self.external_top).update(external)

    def visit_Import(self, node: ast.Import) -> None:
        internal = [a.name for a in node.names if a.name in MODULES]
        external = [a.name.split(".")[0] for a in node.names if a.name.split(".")[0] != PACKAGE]
        self._add(internal, external)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and (node.module or "").split(".")[0] != PACKAGE:
            self._add([], [(node.module or "").split(".")[0]])
            return
        self._add(_resolve(self.importer, node), [])


def _scan() -> dict[str, _Imports]:
    out = {}
    for name, path in MODULES.items():
        visitor = _Imports(name)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        out[name] = visitor
    return out


IMPORTS = _scan()


def _layer(module: str) -> str:
    best = PACKAGE
    for layer in _LAYERS:
        if (module == layer or module.startswith(layer + ".")) and len(layer) > len(best):
            best = layer
    return best


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or with a self-loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _graph(include_lazy: bool) -> dict[str, set[str]]:
    graph = {}
    for name, imports in IMPORTS.items():
        targets = set(imports.runtime)
        if include_lazy and name not in _LAZY_IMPORTERS:
            targets |= imports.lazy
        # Importing a.b.c runs a/__init__ and a/b/__init__ first; those edges are not cycles
        # the code can untangle, so only the named module counts.
        graph[name] = {t for t in targets if t != name}
    return graph


def test_the_scan_finds_the_package() -> None:
    assert "scanstream.publish.scan" in MODULES and "scanstream._protocol.entries" in MODULES
    assert IMPORTS["scanstream.publish.scan"].runtime, "no import found: the AST walk is broken"


def test_no_import_cycle() -> None:
    cycles = _cycles(_graph(include_lazy=True))
    assert cycles == [], f"import cycles (module-level or inside functions): {cycles}"


def test_the_cycle_check_detects_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_function_level_import_of_the_package_outside_the_lazy_entry_points() -> None:
    offenders = {
        name: sorted(imports.lazy)
        for name, imports in IMPORTS.items()
        if imports.lazy and name not in _LAZY_IMPORTERS
    }
    assert offenders == {}, f"function-level imports (move them to the top): {offenders}"


def test_imports_go_downward_only() -> None:
    wrong = []
    for name, imports in IMPORTS.items():
        here = _layer(name)
        for target in imports.runtime:
            there = _layer(target)
            if here == there:
                continue
            rank_here, rank_there = _LAYERS[here], _LAYERS[there]
            if rank_there < rank_here or (here, there) in _SIDEWAYS:
                continue
            wrong.append(f"{name} ({here}) imports {target} ({there})")
    assert wrong == [], "imports that go up or sideways:\n" + "\n".join(sorted(wrong))


def test_h5py_is_imported_by_the_writer_and_lazily_by_image_reading_only() -> None:
    wrong = []
    for name, imports in IMPORTS.items():
        if "h5py" in imports.external_top and not name.startswith(_H5PY_MODULE_LEVEL):
            wrong.append(f"{name} imports h5py at module level")
        if "h5py" in imports.external_lazy and not (
            name.startswith(_H5PY_MODULE_LEVEL) or name in _H5PY_LAZY
        ):
            wrong.append(f"{name} imports h5py in a function")
    assert wrong == []


@pytest.mark.parametrize("module", ["scanstream", "scanstream.publish", "scanstream.subscribe"])
def test_importing_the_core_loads_neither_h5py_nor_the_writer(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "loaded = sorted(m for m in sys.modules if m == 'h5py' or m.startswith('scanstream.writer')"
        " or m.startswith('scanstream.cli') or m.startswith('scanstream.sim')); "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"import {module} loaded {done.stdout.strip()} {done.stderr}"


def test_the_writer_names_stay_reachable_from_the_package_root() -> None:
    import scanstream
    import scanstream.writer

    assert scanstream.WriterService is scanstream.writer.WriterService
    assert scanstream.saved_scans is scanstream.writer.saved_scans
    assert scanstream.writer_status is scanstream.writer.writer_status
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(scanstream, "no_such_name".strip())
    for name in scanstream.__all__:
        assert getattr(scanstream, name) is not None, name
