"""The core publish/subscribe and lifecycle tests, run against the local cluster.

The test functions are those of the single-server modules: this package's ``redis_url``
fixture (conftest.py) hands them the cluster's ``redis+cluster://`` URL instead.
"""

from test_lifecycle import *  # noqa: F403
from test_publish_subscribe import *  # noqa: F403
