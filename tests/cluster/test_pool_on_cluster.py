"""The writer pool tests run against the local cluster: the scan claims, the pool's set and
member records live in the slot of the session (its hash tag), its health hash in another."""

from writer.test_pool import *  # noqa: F403

# The process tests start `scanstream --redis-url redis+cluster://...`, which the command line
# refuses for now (cli/errors.py knows no cluster scheme); the in-process ones cover the keys.
del globals()["test_pool_processes_write_each_scan_once_and_take_over_a_killed_writer"]
