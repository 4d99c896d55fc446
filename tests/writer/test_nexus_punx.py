"""A file like a real scan passes the punx NeXus validator, except for the exceptions
documented in docs/nexus_layout.md ("Validation")."""

from __future__ import annotations

import re
from pathlib import Path

from .punx_check import punx_errors, punx_findings, require_punx
from .scan_files import build_scan_file

#: BLISS entry names ("1.1") break the strict NeXus naming rule; entry_name(...,
#: strict_names=True) gives names without the dot.
BLISS_ENTRY_NAME = re.compile(r"^/\d+\.\d+ ERROR validItemName: ")
#: '.' in NXdata@axes marks a dimension without an axis (NeXus NXdata); punx 0.3 checks it
#: as an item name and rejects it.
AXES_PLACEHOLDER = re.compile(r"^\S+@axes ERROR valid name @axes\['\.'\]: ")


def without_documented(errors: list[str], *, bliss_names: bool = True) -> list[str]:
    """``errors`` without the documented exceptions (entry names only when ``bliss_names``)."""
    patterns = [AXES_PLACEHOLDER] + ([BLISS_ENTRY_NAME] if bliss_names else [])
    return [e for e in errors if not any(p.match(e) for p in patterns)]


def test_scan_file_has_no_punx_error(tmp_path: Path) -> None:
    require_punx()
    errors = punx_errors(build_scan_file(tmp_path))
    assert without_documented(errors) == []
    # The filter removes what it is meant to and nothing else: the three BLISS entry names,
    # and the '.' of the spectrum-vs-motor plot (in each scan and through the scan group).
    assert sorted(e for e in errors if BLISS_ENTRY_NAME.match(e)) == [
        f"/{n}.1 ERROR validItemName: valid HDF5 item name, not valid with NeXus" for n in (1, 2, 3)
    ]
    assert sorted(e.split()[0] for e in errors if AXES_PLACEHOLDER.match(e)) == [
        "/1.1/mca@axes",
        "/2.1/mca@axes",
        "/3.1/scans/1.1/mca@axes",
        "/3.1/scans/2.1/mca@axes",
    ]


def test_strict_names_file_has_no_punx_error(tmp_path: Path) -> None:
    require_punx()
    path = build_scan_file(tmp_path, strict_names=True)
    assert without_documented(punx_errors(path), bliss_names=False) == []
    # punx did validate the file: it found the default plot and the NXdata signal.
    ok = punx_findings(path, "OK")
    assert any(f.test == "NeXus default plot" for f in ok)
    assert any(f.address == "/scan1_1/plotselect@signal" for f in ok)
