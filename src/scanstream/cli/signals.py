"""SIGTERM and SIGHUP handled as Ctrl-C is: a command stopped by ``kill PID``, a service
manager, ``timeout`` or a closed terminal cleans up as on Ctrl-C, then exits 128 + the signal.

Python's default for these signals ends the process at once, without ``finally`` blocks:
``scanstream demo`` left its writer process running for ever (orphaned), and a scan left
open until its lease declared it KILLED. :class:`Terminated` is a KeyboardInterrupt, so that
every place that handles Ctrl-C (the library's scan context manager ends the scan
USER_ABORTED, the commands' clean-ups) handles these signals too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = [
    "STOP_SIGNALS",
    "Terminated",
    "interrupt_exit_code",
    "interrupt_name",
    "terminating_as_interrupt",
]

#: The signals that stop a command as Ctrl-C does (SIGINT is Python's KeyboardInterrupt).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP received: raised in the main thread where Ctrl-C would raise
    KeyboardInterrupt.

    Parameters
    ----------
    signum : int
        The signal received.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt_name(signum: int) -> str:
    """``"Ctrl-C"`` for SIGINT, else the signal's name (``"SIGTERM"``)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def interrupt_exit_code(exc: BaseException) -> int:
    """The exit code of a command stopped by ``exc``: 128 + its signal (130 for Ctrl-C)."""
    return 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)


#: Seconds after which a signal that came during a finalizer is delivered again.
_REDELIVERY_DELAY = 0.02


def _must_not_be_cut(frame: FrameType | None) -> bool:
    """True if ``frame`` runs inside an object's ``__del__`` (the garbage collector's) or
    inside ``ScanPublisher.end`` (a scan being ended)."""
    scan_module = sys.modules.get("scanstream.publish.scan")  # not loaded: no scan is ending
    end_code = scan_module.ScanPublisher.end.__code__ if scan_module is not None else None
    while frame is not None:
        if frame.f_code.co_name == "__del__" or frame.f_code is end_code:
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def terminating_as_interrupt() -> Iterator[None]:
    """Within the block, the first SIGTERM or SIGHUP raises :class:`Terminated`; later ones are
    ignored, so that the clean-up they started (a writer process stopped) is not cut short.

    Only in the main thread (elsewhere Python cannot handle signals): there, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if came:
            return
        if _must_not_be_cut(frame):
            # Raised in a finalizer, Terminated would end in Python's "Exception ignored in"
            # (a finalizer's exceptions are printed and dropped) and the command would run on,
            # as if never told to stop. Raised in a scan's end(), it would cut the end short:
            # the scan, about to end, would stay open until its lease declared it KILLED. The
            # same signal again in a moment, out of it (an end riding out an outage delays it
            # by that outage, at most the outage budget).
            timer = threading.Timer(_REDELIVERY_DELAY, os.kill, (os.getpid(), signum))
            timer.daemon = True
            timer.start()
            return
        came.append(signum)
        raise Terminated(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)
