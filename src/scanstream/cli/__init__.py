"""The ``scanstream`` command line. It only parses arguments and calls library functions.

To add a subcommand, write a ``_configure_<name>(parser)`` that adds its arguments and a
``_run_<name>(args) -> int`` that calls the library and returns the exit code, then add one
:class:`Command` line to :data:`COMMANDS`. A subcommand that talks to Redis gets its URL from
:func:`redis_url` (``--redis-url`` > ``$SCANSTREAM_REDIS_URL`` > the user's embedded server).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from .._transport import server
from .._transport.connection import DataStore
from .._transport.urls import mask_url
from ..admin.listing import server_dependents
from ..exceptions import ScanstreamError
from . import admin as admin_cli
from . import demo
from . import legacy as legacy_cli
from . import scan as sim_cli
from . import show as show_cli
from . import web as web_cli
from . import writer as writer_cli
from .logs import configure_logging

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, its one-line help, how to add its arguments, what it runs."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def redis_url(args: argparse.Namespace) -> str:
    """Return the Redis URL a subcommand should use (this may start the embedded server)."""
    return server.resolve_url(args.redis_url)


def _print_mapping(values: Mapping[str, Any]) -> None:
    """Print ``key: value`` lines, aligned, with booleans as yes/no and None as '-'."""
    width = max(map(len, values), default=0)
    for key, value in values.items():
        text = ("yes" if value else "no") if isinstance(value, bool) else value
        print(f"{key + ':':<{width + 1}} {'-' if text is None else text}")


# --- scanstream server start|stop|status --------------------------------------------------------


def _configure_server(parser: argparse.ArgumentParser) -> None:
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


def _run_server(args: argparse.Namespace) -> int:
    if args.redis_url:
        logger.warning("`scanstream server` manages your embedded server; --redis-url is ignored")
    if args.action == "start":
        print(server.ensure_server())
        return 0
    if args.action == "stop":
        return _stop_server(force=args.force)
    status = server.server_status()
    _print_mapping({**status, "url": mask_url(status["url"])})
    return 0 if status["running"] else 1


def _stop_server(*, force: bool) -> int:
    """Stop the embedded server unless something depends on it (exit code 1) or ``force``."""
    status = server.server_status()
    if not status["running"]:
        print("no embedded server was running")
        return 0
    if not force:
        with DataStore(status["url"]) as store:
            dependents = server_dependents(store)
        if dependents.any:
            persisted = status["persistence"] != "off"
            print(
                f"scanstream: refusing to stop the embedded server: {dependents.describe()}. "
                + (
                    "Its data is persisted and comes back at the next start, but "
                    if persisted
                    else "Its data is not persisted (SCANSTREAM_SERVER_PERSISTENCE=off): "
                    "unsaved scans would be lost, and "
                )
                + "running scans and their clients would fail. Stop them or let the writers "
                "finish, or use `scanstream server stop --force`",
                file=sys.stderr,
            )
            return 1
    print("stopped" if server.stop_server() else "no embedded server was running")
    return 0


COMMANDS: tuple[Command, ...] = (
    Command(
        "server",
        "start, stop or describe your embedded Redis server",
        _configure_server,
        _run_server,
    ),
    Command("scan", sim_cli.SCAN_HELP, sim_cli.configure_scan, sim_cli.run_scan),
    Command("writer", writer_cli.WRITER_HELP, writer_cli.configure_writer, writer_cli.run_writer),
    Command("demo", demo.DEMO_HELP, demo.configure_demo, demo.run_demo),
    Command("ls", admin_cli.LS_HELP, admin_cli.configure_ls, admin_cli.run_ls),
    Command("show", show_cli.SHOW_HELP, show_cli.configure_show, show_cli.run_show),
    Command("web", web_cli.WEB_HELP, web_cli.configure_web, web_cli.run_web),
    Command("delete", admin_cli.DELETE_HELP, admin_cli.configure_delete, admin_cli.run_delete),
    Command("legacy", legacy_cli.LEGACY_HELP, legacy_cli.configure_legacy, legacy_cli.run_legacy),
)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``scanstream``, with every subcommand of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="scanstream", description="Stream beamline scan data through Redis."
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        default=None,
        help="Redis server (redis://HOST:PORT or unix:///PATH); default: "
        "$SCANSTREAM_REDIS_URL, else your embedded server, started if needed",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v: info, -vv: debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.configure(sub)
        # The common options are accepted after the subcommand too
        # (`scanstream writer SESSION --redis-url URL`); SUPPRESS keeps the global ones when absent.
        sub.add_argument(
            "--redis-url",
            metavar="URL",
            default=argparse.SUPPRESS,
            help="as `scanstream --redis-url`",
        )
        sub.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="as `scanstream -v`"
        )
        sub.set_defaults(run=command.run)
    return parser


def _mask_urls(text: str) -> str:
    """``text`` with the password of every URL in it masked."""
    return _URL_RE.sub(lambda match: mask_url(match.group(0)), text)


_URL_RE = re.compile(r"\b(?:rediss?|unix)://[^\s'\"]+")


def main(argv: list[str] | None = None) -> int:
    """Run the ``scanstream`` command line.

    Parameters
    ----------
    argv : list of str or None
        Arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    int
        The exit code: 0 on success, 1 on a scanstream or connection error (printed on stderr),
        2 on a usage error, 130 on Ctrl-C; a subcommand may give its own meaning to 1.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: return its code, so main() stays callable
        return exc.code if isinstance(exc.code, int) else 2
    configure_logging(args.verbose)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.run(args)
    except (ScanstreamError, redis.ConnectionError, redis.TimeoutError) as exc:
        # The messages of scanstream name URLs masked already; a redis-py error may quote one.
        print(f"scanstream: error: {_mask_urls(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
