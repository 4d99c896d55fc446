"""The cluster tests of this folder run on Debian's Redis 7.0 ``redis-server`` instead of the
bundled Valkey: skipped without it, failed on CI (``redis70_binary``, tests/conftest.py).

``server_binary`` is overridden, so the fixtures that start clusters of their own (the failover
tests) start Redis 7.0 nodes too; ``cluster`` is a fixture of its own (not the bundled one's
cached instance), and the parent's ``redis_url`` hands it to the imported tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..cluster_nodes import LocalCluster, local_cluster


@pytest.fixture(scope="session")
def server_binary(redis70_binary: Path) -> Path:
    return redis70_binary


@pytest.fixture(scope="session")
def cluster(
    server_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    with local_cluster(server_binary, tmp_path_factory.mktemp("cluster-redis7")) as started:
        yield started
