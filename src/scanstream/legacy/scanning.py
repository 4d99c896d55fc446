"""``bliss.scanning.scan``: only ``ScanState``, which subscribers compare scan_info's
``state`` to (``node.info["state"] == ScanState.KILLED``, BLISS's tests/scans/test_exception.py).

scanstream's :class:`~scanstream.ScanState` has BLISS's values for the final states (DONE 4,
USER_ABORTED 5, KILLED 6); scanstream adds FAILED (7: BLISS ended a failed scan KILLED) and
has CREATED (0) and PREPARED (1) where BLISS had IDLE, PREPARING, STARTING and STOPPING.
The rest of BLISS's scanning engine (``Scan``, chains) is not a subscriber's: importing it
fails with an ImportError.
"""

from ..models import ScanState

__all__ = ["ScanState"]
