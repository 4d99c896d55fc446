"""The writer pool tests run against the local cluster: the scan claims, the pool's set and
member records live in the slot of the session (its hash tag), its health hash in another."""

from writer.test_pool import *  # noqa: F403

from scanstream.cli.errors import url_scheme_problem

# The process tests start `scanstream --redis-url redis+cluster://...`: only where the command
# line knows the cluster schemes (older trees refused them).
if url_scheme_problem("redis+cluster://127.0.0.1:7000", "--redis-url") is not None:
    del globals()["test_pool_processes_write_each_scan_once_and_take_over_a_killed_writer"]
