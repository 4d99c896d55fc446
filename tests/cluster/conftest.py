"""Fixtures running tests against a local Redis Cluster (3 masters, 3 replicas).

- ``cluster`` (session): the :class:`~cluster_nodes.LocalCluster`, stopped at the end.
- ``redis_url`` (function): overrides the suite's fixture: the cluster's ``redis+cluster://``
  URL, every master flushed first. Tests of other modules imported here (``from
  test_publish_subscribe import ...``) then run against the cluster unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scanstream._transport.connection import clear_default_stores

from .cluster_nodes import LocalCluster, local_cluster


@pytest.fixture(scope="session")
def cluster(
    server_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    with local_cluster(server_binary, tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture
def redis_url(cluster: LocalCluster) -> str:
    cluster.flushall()
    clear_default_stores()
    return cluster.url
