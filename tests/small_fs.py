"""A small file system for the full-disk tests: a tmpfs of a few MiB, or a skip."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``"1m"``) at ``mount_point`` (made here) for the block.

    Skips the test where mounting is not allowed (not root, a container without the right).
    """
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        timeout=10,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        # Room first, so that a writer still holding a file there can flush and close it.
        for command in (
            ["mount", "-o", "remount,size=64m", str(mount_point)],
            ["umount", "-l", str(mount_point)],
        ):
            subprocess.run(command, capture_output=True, timeout=10, check=False)
