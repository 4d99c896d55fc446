"""Run BLISS 1.x subscriber code unchanged: ``bliss.*`` / ``blissdata.*`` names on scanstream.

:func:`install` adds an import hook that resolves the subscriber modules of BLISS 1.x
(``bliss.data.node``, ``bliss.data.nodes.*``, ``bliss.data.events``, ``bliss.data.scan``,
``bliss.data.lima_image``, ``bliss.config.streaming``, and ``ScanState`` of
``bliss.scanning.scan``) and of ``blissdata`` 0.3 (``blissdata.data.*``) to the modules of
this package, which re-export scanstream's classes under their legacy names;
:func:`run_script` runs a script with the hook installed (``scanstream legacy SCRIPT.py``,
``python -m scanstream.legacy SCRIPT.py``). Where a real BLISS or blissdata is installed the
hook refuses (:class:`LegacyImportError`): it would shadow it. Table of names and
differences: ``docs/bliss_compatibility.md``.
"""

from .hook import (
    ALIASES,
    LegacyFinder,
    LegacyImportError,
    install,
    installed,
    run_script,
    uninstall,
)

__all__ = [
    "ALIASES",
    "LegacyFinder",
    "LegacyImportError",
    "install",
    "installed",
    "run_script",
    "uninstall",
]
