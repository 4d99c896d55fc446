"""A subset of the cluster tests on a Redis 7.0 cluster (3 masters, 3 replicas of Debian's
``redis-server``, see conftest.py): the core publish/subscribe tests, the writer saving scans
bit for bit, one failover of each kind that ends a scan, and a master restarted empty.

The test functions are those of the bundled-server modules, run unchanged: the fixtures of
this folder start Redis 7.0 nodes.
"""

from pathlib import Path

import pytest
from test_publish_subscribe import *  # noqa: F403
from writer.conftest import writer  # noqa: F401
from writer.test_service import (  # noqa: F401
    test_aborted_scan_keeps_exactly_the_emitted_points,
    test_catalogue_files_equal_redis_bit_for_bit,
    test_scans_run_while_no_writer_runs_are_written_when_it_starts,
)

from ..cluster_nodes import LocalCluster
from ..test_failover import own_cluster  # noqa: F401
from ..test_failover import test_a_master_killed_mid_scan_loses_nothing_silently as _failover
from ..test_master_restarted_empty import (  # noqa: F401
    bare_cluster,
    test_scans_of_a_master_restarted_empty_are_reported_failed,
)


@pytest.mark.parametrize("case", ["replicated", "lagging-tail"])
def test_a_master_killed_mid_scan_on_redis7(
    own_cluster: LocalCluster,  # noqa: F811
    redis70_binary: Path,
    tmp_path: Path,
    case: str,
) -> None:
    assert own_cluster.binary == redis70_binary
    _failover(own_cluster, tmp_path, case)


def test_the_nodes_are_redis_7_0(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        with node.client() as client:
            info = client.info("server")
        assert str(info["redis_version"]).startswith("7.0."), info
        assert "valkey_version" not in info
