"""Path safety through the service: escapes refused with a FAILED verdict, --allow, --umask."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from scanstream._protocol.entries import parse_saving
from scanstream.models import SavingState
from scanstream.writer import WriterService, saved_scans

from .conftest import wait_for, wait_saved


def _final_verdict(store, number: int):
    def verdict():
        return parse_saving(store.redis.hgetall(store.keys.scan("test_session", number)))

    wait_for(lambda: verdict().state.is_final, 15, f"a verdict on scan {number}")
    return verdict()


@pytest.fixture
def strict_writer(store, tmp_path):
    """A writer under ``tmp_path/root`` allowed ``tmp_path/allowed`` only, umask 027."""
    (tmp_path / "allowed").mkdir()
    previous = os.umask(0o022)
    service = WriterService(
        ["test_session"],
        root=tmp_path / "root",
        store=store,
        allow=[tmp_path / "allowed"],
        umask=0o027,
    )
    try:
        with service:
            yield service
    finally:
        os.umask(previous)


def _scan(session, filename):
    with session.create_scan("s", {"filename": filename}) as scan:
        scan.create_container("timer").create_channel("timer:c").emit([1.0])
    return scan


@pytest.mark.parametrize(
    "filename",
    ["../escape.h5", "{tmp}/outside/x.h5", "link/x.h5", "/etc/scanstream.h5", "sub/../../x.h5"],
)
def test_an_escape_is_refused_with_a_reason(
    strict_writer, session, store, tmp_path, filename, caplog
):
    caplog.set_level(logging.CRITICAL, logger="scanstream")
    (tmp_path / "root").mkdir(exist_ok=True)
    (tmp_path / "outside").mkdir(exist_ok=True)
    link = tmp_path / "root/link"
    if not link.exists():
        link.symlink_to(tmp_path / "outside")
    scan = _scan(session, filename.format(tmp=tmp_path))
    verdict = _final_verdict(store, scan.number)
    assert verdict.state is SavingState.FAILED, verdict
    assert "refused" in verdict.reason or "outside" in verdict.reason, verdict.reason
    assert scan.number not in saved_scans("test_session", store=store)
    assert list((tmp_path / "outside").iterdir()) == []
    assert not (tmp_path / "escape.h5").exists() and not (tmp_path / "x.h5").exists()


def test_an_allowed_directory_is_written_with_the_umask(strict_writer, session, store, tmp_path):
    scan = _scan(session, str(tmp_path / "allowed/data.h5"))
    wait_saved(store, "test_session", {scan.number})
    session_file = tmp_path / "allowed/data.h5"
    scan_file = tmp_path / "allowed/data_scans/scan0001.h5"
    for path in (session_file, scan_file):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o007 == 0, f"{path}: {oct(mode)} is readable by others despite umask 027"
