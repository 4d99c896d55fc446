"""The writer's files pass the punx NeXus validator, but for documented BLISS conventions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scanstream import get_session_node
from scanstream.sim import SavingConfig
from scanstream.sim.catalogue import run_catalogue

from .conftest import wait_saved
from .punx_check import punx_available, punx_errors


def test_catalogue_file_passes_punx(writer, session, store, tmp_path):
    if not punx_available():
        pytest.skip("punx is not installed")
    run_catalogue(
        session,
        SavingConfig(tmp_path / "data", "test_session"),
        names=["d2scan", "lima_loopscan", "mca_ascan", "varying_samples_ascan", "sequence"],
    )
    scans = get_session_node("test_session", store=store).children()
    wait_saved(store, "test_session", {s.number for s in scans})
    path = Path(scans[0].info["filename"])
    # BLISS entry names ("1.1") are a documented deliberate exception (docs/nexus_layout.md).
    errors = [e for e in punx_errors(path) if not re.match(r"/\d+\.\d+ ERROR validItemName", e)]
    assert errors == [], "\n".join(map(str, errors))
