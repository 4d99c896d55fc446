"""The writer's path policy: files only under its root and the directories it is allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scanstream import WriterError
from scanstream.writer.paths import WritePolicy


@pytest.fixture
def policy(tmp_path: Path) -> WritePolicy:
    (tmp_path / "root").mkdir()
    (tmp_path / "extra").mkdir()
    return WritePolicy.create(tmp_path / "root", [tmp_path / "extra"])


def test_default_and_relative_files_go_below_the_root(policy: WritePolicy) -> None:
    assert policy.scan_file({}, "s") == policy.root / "s" / "s.h5"
    assert policy.scan_file({"filename": "a/b.h5"}, "s") == policy.root / "a" / "b.h5"


def test_an_allowed_directory_is_accepted(policy: WritePolicy, tmp_path: Path) -> None:
    target = tmp_path / "extra" / "deep" / "x.nxs"
    assert policy.scan_file({"filename": str(target)}, "s") == target


@pytest.mark.parametrize(
    ("filename", "why"),
    [
        ("../outside.h5", "'..' components"),
        ("a/../../outside.h5", "'..' components"),
        ("a/../inside.h5", "'..' components"),  # refused although it would land inside
        ("/etc/passwd.h5", "outside the directories"),
        ("~/x.h5", "outside the directories"),
        ("notes.txt", "HDF5 files only"),
        ("", "must be a file path"),
        ("  ", "must be a file path"),
        ("a\0.h5", "must be a file path"),
    ],
)
def test_escapes_and_bad_names_are_refused(policy: WritePolicy, filename: str, why: str) -> None:
    with pytest.raises(WriterError, match=why) as caught:
        policy.scan_file({"filename": filename}, "s")
    if filename.strip() and "\0" not in filename:
        assert repr(filename) in str(caught.value)


def test_a_symlink_that_leaves_the_root_is_refused(policy: WritePolicy, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", policy.root / "link")
    with pytest.raises(WriterError, match="outside the directories") as caught:
        policy.scan_file({"filename": "link/x.h5"}, "s")
    assert str(tmp_path / "elsewhere" / "x.h5") in str(caught.value)
    os.symlink(tmp_path / "elsewhere" / "f.h5", policy.root / "f.h5")  # the file itself a link
    with pytest.raises(WriterError, match="outside the directories"):
        policy.scan_file({"filename": "f.h5"}, "s")


def test_a_symlink_inside_the_root_is_followed(policy: WritePolicy) -> None:
    (policy.root / "real").mkdir()
    os.symlink(policy.root / "real", policy.root / "alias")
    assert policy.scan_file({"filename": "alias/x.h5"}, "s") == policy.root / "alias" / "x.h5"


def test_the_umask_is_checked_and_applied(tmp_path: Path) -> None:
    with pytest.raises(WriterError, match="umask"):
        WritePolicy.create(tmp_path, umask=0o1000)
    previous = os.umask(0o022)
    try:
        WritePolicy.create(tmp_path, umask=0o077).apply_umask()
        (tmp_path / "new").write_bytes(b"")
        assert (tmp_path / "new").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)
