"""``scanstream server start|stop|status``: the user's embedded Redis server."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from typing import Any

from .._transport import shared_server
from .._transport.connection import DataStore
from .._transport.urls import mask_url
from ..admin.listing import server_dependents
from .errors import print_error

logger = logging.getLogger(__name__)


def configure_server(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``scanstream server``."""
    parser.add_argument(
        "action",
        choices=("start", "stop", "status"),
        help="start it (prints its URL), stop it, or describe it "
        "(exit code 0 if it runs, 1 if not)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="stop: even while clients are connected or scans are not saved yet "
        "(by default the stop is refused, exit code 1, saying what depends on the server)",
    )


def run_server(args: argparse.Namespace) -> int:
    """Start, stop or describe the embedded server; see :func:`configure_server`."""
    if args.redis_url:
        logger.warning("`scanstream server` manages your embedded server; --redis-url is ignored")
    if args.action == "start":
        print(shared_server.ensure_server())
        return 0
    if args.action == "stop":
        return _stop_server(force=args.force)
    status = shared_server.server_status()
    _print_mapping({**status, "url": mask_url(status["url"])})
    return 0 if status["running"] else 1


def _print_mapping(values: Mapping[str, Any]) -> None:
    """Print ``key: value`` lines, aligned, with booleans as yes/no and None as '-'."""
    width = max(map(len, values), default=0)
    for key, value in values.items():
        text = ("yes" if value else "no") if isinstance(value, bool) else value
        print(f"{key + ':':<{width + 1}} {'-' if text is None else text}")


def _stop_server(*, force: bool) -> int:
    """Stop the embedded server unless something depends on it (exit code 1) or ``force``."""
    status = shared_server.server_status()
    if not status["running"]:
        print("no embedded server was running")
        return 0
    if not force:
        with DataStore(status["url"]) as store:
            dependents = server_dependents(store)
        if dependents.any:
            persisted = status["persistence"] != "off"
            print_error(
                "server",
                f"refusing to stop the embedded server: {dependents.describe()}. "
                + (
                    "Its data is persisted and comes back at the next start, but "
                    if persisted
                    else "Its data is not persisted (SCANSTREAM_SERVER_PERSISTENCE=off): "
                    "unsaved scans would be lost, and "
                )
                + "running scans and their clients would fail. Stop them or let the writers "
                "finish, or use `scanstream server stop --force`",
            )
            return 1
    print("stopped" if shared_server.stop_server() else "no embedded server was running")
    return 0
