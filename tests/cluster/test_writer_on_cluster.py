"""The writer service tests (the catalogue saved bit for bit included) and those of ``ls`` and
``delete``, run against the local cluster (see test_core_on_cluster.py for how)."""

from test_admin import *  # noqa: F403
from writer.conftest import tiny_disk, writer  # noqa: F401
from writer.test_service import *  # noqa: F403

# Two tests look at the server with a plain client of the single-server URL (CLIENT KILL of
# every connection; KEYS): not for a cluster. test_slots.py checks that a deleted scan leaves
# no key on its master, and test_failover.py kills a whole master.
for _name in (
    "test_connections_killed_mid_scan_lose_nothing",
    "test_delete_keeps_scans_whose_saving_is_not_done",
):
    del globals()[_name]
