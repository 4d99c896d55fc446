"""A publisher script for tests that kill or freeze it: a 10-point scan, then it waits.

Run as ``python -c LEASED_PUBLISHER URL``: it prints the scan's number once the points are
stored, then sleeps with its lease (``lease_time`` 1 s) renewed, until it is killed.
"""

import subprocess
import sys
import textwrap

LEASED_PUBLISHER = textwrap.dedent(
    """
    import sys, time
    from scanstream import DataStore, Settings, create_session
    store = DataStore(settings=Settings(redis_url=sys.argv[1], lease_time=1.0))
    scan = create_session("test_session", store=store).create_scan("timescan", {"npoints": 0})
    channel = scan.create_container("timer").create_channel("diode")
    scan.prepared()
    channel.emit([float(i) for i in range(10)])
    scan.flush()
    print(scan.number, flush=True)
    time.sleep(60)
    """
)


def start_leased_publisher(redis_url: str) -> tuple[subprocess.Popen[str], int]:
    """Start :data:`LEASED_PUBLISHER` on ``redis_url``; the process and its scan's number
    (the process is killed if it prints no number)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LEASED_PUBLISHER, redis_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        return proc, int(proc.stdout.readline())
    except BaseException:
        proc.kill()
        proc.communicate(timeout=10)
        raise
