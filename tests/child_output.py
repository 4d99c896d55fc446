"""Reading a child process's output in tests without blocking for ever."""

from __future__ import annotations

import selectors
import subprocess


def readline(child: subprocess.Popen[str], timeout: float) -> str:
    """The child's next stdout line (stripped), or "" if none comes within ``timeout``."""
    assert child.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(child.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return child.stdout.readline().strip()
