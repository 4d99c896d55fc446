"""The import hook behind ``scanstream legacy``: legacy module names -> modules of this package."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import runpy
import sys
import types
from collections.abc import Sequence
from typing import Any

from ..exceptions import ScanstreamError

_HERE = __name__.rsplit(".", 1)[0]  # "scanstream.legacy"

#: Legacy module name -> the module of this package that stands for it.
ALIASES: dict[str, str] = {}
for _root in ("bliss.data", "blissdata.data"):
    ALIASES.update(
        {
            f"{_root}.node": f"{_HERE}.node",
            f"{_root}.nodes.channel": f"{_HERE}.nodes_channel",
            f"{_root}.nodes.lima": f"{_HERE}.nodes_lima",
            f"{_root}.nodes.scan": f"{_HERE}.nodes_scan",
            f"{_root}.nodes.node_ref_channel": f"{_HERE}.nodes_node_ref_channel",
            f"{_root}.nodes.scan_group": f"{_HERE}.nodes_scan_group",
            f"{_root}.events": f"{_HERE}.events",
            f"{_root}.scan": f"{_HERE}.scan",
            f"{_root}.lima_image": f"{_HERE}.lima_image",
        }
    )
# What BLISS's own bliss/data/scan.py imports besides the data nodes.
for _name in ("counter", "axis", "utils"):
    ALIASES[f"bliss.common.{_name}"] = f"{_HERE}.common"
ALIASES["bliss.config.streaming"] = f"{_HERE}.streaming"
# Only ScanState, which subscribers compare scan_info["state"] to.
ALIASES["bliss.scanning.scan"] = f"{_HERE}.scanning"
ALIASES["blissdata.streaming"] = f"{_HERE}.streaming"

#: Legacy packages that exist only to hold the modules above.
_PACKAGES = frozenset(
    name.rsplit(".", n)[0] for name in ALIASES for n in range(1, name.count(".") + 1)
)
_ROOTS = ("bliss", "blissdata")


class LegacyImportError(ScanstreamError, ImportError):
    """A legacy name scanstream does not provide, or a real BLISS that the hook would shadow."""


class _AliasLoader(importlib.abc.Loader):
    """Loads a legacy name as the module that stands for it (or an empty package)."""

    def __init__(self, target: str | None, missing: str | None = None) -> None:
        self.target = target
        self.missing = missing

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        if self.missing is not None:
            raise LegacyImportError(self.missing)
        if self.target is None:
            module = types.ModuleType(spec.name, f"BLISS package {spec.name} (scanstream legacy)")
            module.__path__ = []
            return module
        return importlib.import_module(self.target)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the module is scanstream's."""


class LegacyFinder(importlib.abc.MetaPathFinder):
    """Meta path finder of the legacy names (see :data:`ALIASES`)."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".", 1)[0] not in _ROOTS:
            return None
        if fullname in ALIASES:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(ALIASES[fullname]))
        if fullname in _PACKAGES:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(None), is_package=True)
        provided = ", ".join(sorted(ALIASES))
        message = (
            f"{fullname} is not part of BLISS's subscriber API that scanstream provides "
            f"(scanstream legacy resolves: {provided}); see docs/bliss_compatibility.md"
        )
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(None, message))


_FINDER = LegacyFinder()


def installed() -> bool:
    """True while the hook is installed."""
    return _FINDER in sys.meta_path


def _real_installation() -> str | None:
    """Where a real ``bliss`` or ``blissdata`` is importable, or None."""
    for root in _ROOTS:
        module = sys.modules.get(root)
        if module is not None and not isinstance(getattr(module, "__loader__", None), _AliasLoader):
            return f"{root} (already imported from {getattr(module, '__file__', '?')})"
        try:
            spec = importlib.util.find_spec(root)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and not isinstance(spec.loader, _AliasLoader):
            return f"{root} ({spec.origin or spec.submodule_search_locations})"
    return None


def install() -> None:
    """Resolve the legacy module names to scanstream (idempotent).

    Raises
    ------
    LegacyImportError
        A real BLISS or blissdata is installed: the hook would shadow it. Run the script
        in an environment without them (or run it with BLISS itself).
    """
    if installed():
        return
    real = _real_installation()
    if real is not None:
        here = os.path.join(os.getcwd(), "")
        hint = (
            "; it is found through the current directory (a BLISS checkout?): run from "
            "another directory"
            if here in real
            else ""
        )
        raise LegacyImportError(
            f"a real {real} is installed: scanstream legacy would shadow it. Run the script "
            f"in an environment without BLISS (a venv with only scanstream), or with BLISS{hint}"
        )
    sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    """Remove the hook and forget the legacy modules it loaded."""
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    for name in [n for n in sys.modules if n.split(".", 1)[0] in _ROOTS]:
        module = sys.modules[name]
        if isinstance(getattr(getattr(module, "__spec__", None), "loader", None), _AliasLoader):
            del sys.modules[name]


def run_script(path: str, args: Sequence[str] = (), *, redis_url: str | None = None) -> Any:
    """Run the Python script ``path`` as ``__main__`` with the legacy names resolved.

    Parameters
    ----------
    path : str
        The script.
    args : sequence of str
        Its arguments (``sys.argv[1:]`` as the script sees it).
    redis_url : str, optional
        Exported as ``SCANSTREAM_REDIS_URL`` for the script.

    Raises
    ------
    LegacyImportError
        A real BLISS is installed (see :func:`install`).
    FileNotFoundError
        No such script.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no script {path!r}: give the path of a Python file")
    install()
    if redis_url is not None:
        os.environ["SCANSTREAM_REDIS_URL"] = redis_url
    saved_argv, saved_path0 = sys.argv, sys.path[0] if sys.path else None
    sys.argv = [path, *args]
    # As `python SCRIPT`: the script's directory first on sys.path.
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        return runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv = saved_argv
        if sys.path and sys.path[0] != saved_path0:
            del sys.path[0]
