"""``scanstream demo``: the catalogue published and written by a writer process."""

from __future__ import annotations

import h5py

from scanstream.cli import main
from scanstream.writer import writer_status


def test_demo_writes_every_catalogue_scan_and_summarizes_them(redis_url, store, tmp_path, capsys):
    assert main(["--redis-url", redis_url, "demo", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "writer: 20/20 scans saved" in out
    files = list(tmp_path.rglob("sample_*.h5"))
    assert len(files) == 1 and str(files[0]) in out
    with h5py.File(files[0], "r") as file:
        entries = set(file)
        assert {
            "1.1",
            "4.1",
            "4.2",
            "13.1",
            "18.1",
            "19.1",
        } <= entries and "20.1" not in entries  # 20: saving off (the catalogue's last)
        assert file["18.1/end_reason"].asstr()[()] == "KILLED"
    assert "4.2   test" in out and "(not saved: saving off)" in out
    assert writer_status("demo", store=store) is None  # the demo's writer process has stopped
