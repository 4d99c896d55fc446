"""Run the punx NeXus validator on a file and collect its ERROR findings.

punx (PyPI) validates offline: its wheel ships NXDL definition sets (v2018.5 is the default)
in its own source cache, so no network access is needed. It runs in a subprocess, with a
timeout, because it prints a lot and changes global state (logging, its settings file).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

#: Seconds one validation may take (a small file takes well under 2 s).
PUNX_TIMEOUT = 60.0


@dataclass(frozen=True)
class Finding:
    """One row of punx's findings table."""

    address: str
    status: str
    test: str
    comments: str

    def __str__(self) -> str:
        return f"{self.address} {self.status} {self.test}: {self.comments}"


def punx_available() -> bool:
    """True when punx can be imported by this interpreter."""
    return importlib.util.find_spec("punx") is not None


def require_punx() -> None:
    """Skip the calling test when punx is not importable (and only then)."""
    if not punx_available():
        pytest.skip("punx is not installed (pip install punx)")


def _parse_table(text: str) -> list[Finding]:
    """Rows of the reStructuredText "findings" table that punx prints."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "findings")
    except StopIteration:
        raise RuntimeError(f"no findings table in punx output:\n{text}") from None
    # Table: ruler, header, ruler, rows..., ruler. Column spans come from the ruler.
    ruler = lines[start + 1]
    spans = []
    pos = 0
    for part in ruler.split(" "):
        if part:
            spans.append((pos, pos + len(part)))
        pos += len(part) + 1
    if len(spans) != 4 or lines[start + 3] != ruler:
        raise RuntimeError(f"unexpected punx findings table layout:\n{text}")
    findings = []
    for line in lines[start + 4 :]:
        if line == ruler:
            break
        # The last column runs to the end of the line (comments may be wider than the ruler).
        cells = [line[a:b].strip() for a, b in spans[:3]] + [line[spans[3][0] :].strip()]
        findings.append(Finding(*cells))
    return findings


def punx_findings(
    path: str | os.PathLike[str], report: str = "ERROR", timeout: float = PUNX_TIMEOUT
) -> list[Finding]:
    """Findings of ``punx validate --report REPORT path`` (default: ERROR only).

    Raises
    ------
    RuntimeError
        punx failed or printed no findings table.
    subprocess.TimeoutExpired
        It took longer than ``timeout`` seconds.
    """
    cmd = [sys.executable, "-m", "punx.main", "validate", "--report", report, os.fspath(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"punx exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return _parse_table(proc.stdout)


def punx_errors(path: str | os.PathLike[str], timeout: float = PUNX_TIMEOUT) -> list[str]:
    """The findings of status ERROR that punx reports for ``path``, one text per finding."""
    return [str(f) for f in punx_findings(path, "ERROR", timeout) if f.status == "ERROR"]
