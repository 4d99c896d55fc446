"""The ``scanstream`` command line. It only parses arguments and calls library functions.

Every subcommand is one line of :data:`COMMANDS`: ``Command(NAME, HELP, MODULE)``, where
``scanstream.cli.MODULE`` defines ``configure_NAME(parser)`` (adds the arguments) and
``run_NAME(args) -> int`` (calls the library, returns the exit code); ``configure=`` and
``run=`` name other functions of the module. A module is imported only when its subcommand
runs (or for ``--help`` of that subcommand, or ``scanstream completion``), so that
``scanstream server status`` does not load h5py and the writer. A subcommand that talks to
Redis gets its URL from :func:`redis_url` (``--redis-url`` > ``$SCANSTREAM_REDIS_URL`` > the
user's embedded server).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis

from .. import __version__
from .._transport import shared_server
from .._transport.urls import mask_url
from ..exceptions import ScanstreamError
from .errors import describe_failure, discard_stdout, print_error, url_origin, url_problem
from .logs import configure_logging
from .signals import interrupt_exit_code, terminating_as_interrupt
from .usage import SubParsers, UsageError, accept_negative_values

__all__ = ["COMMANDS", "Command", "build_parser", "main", "redis_url"]


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, its one-line help, the module that implements it.

    ``configure`` and ``run`` name functions of ``scanstream.cli.<module>``; by default
    ``configure_<name>`` and ``run_<name>``.
    """

    name: str
    help: str
    module: str
    configure: str = ""
    run: str = ""
    #: The command handles SIGTERM and SIGHUP itself, or leaves them to the script it runs;
    #: otherwise they stop it as Ctrl-C does (:mod:`scanstream.cli.signals`).
    own_signals: bool = False

    def load(self) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int]]:
        """Import the module; return its (configure, run) functions."""
        module = importlib.import_module(f"{__name__}.{self.module}")
        configure = getattr(module, self.configure or f"configure_{self.name}")
        run = getattr(module, self.run or f"run_{self.name}")
        return configure, run


#: Every subcommand, in the order of ``scanstream --help``: one line each.
COMMANDS: tuple[Command, ...] = (
    Command("server", "start, stop or describe your embedded Redis server", "server"),
    Command(
        "scan",
        "run a simulated scan (ct, loopscan, timescan, ascan, dscan, a2scan, d2scan, amesh)",
        "scan",
    ),
    Command(
        "writer",
        "write every scan of some sessions into HDF5/NeXus files, live (Ctrl-C stops)",
        "writer",
        own_signals=True,  # WriterService.run's: a stop on SIGINT and SIGTERM
    ),
    Command(
        "demo",
        "publish the example scans and write their NeXus files (a writer process is started)",
        "demo",
    ),
    Command(
        "watch",
        "follow sessions live: scans starting and ending, last values, a row per point",
        "watch",
    ),
    Command(
        "web",
        "serve a live view of the sessions' scans in the browser (read-only)",
        "web",
        own_signals=True,  # uvicorn's: a stop on SIGINT and SIGTERM
    ),
    Command(
        "ls",
        "list sessions and their stored scans (state, points, memory, saving verdict)",
        "admin",
    ),
    Command(
        "show",
        "describe a stored scan: title, state, times, channels, images, where it was saved",
        "show",
    ),
    Command(
        "delete",
        "delete stored scans of a session: ended ones whose saving is done (saved, or off by "
        "design) only, unless --force",
        "admin",
    ),
    Command(
        "legacy",
        "run a BLISS 1.x subscriber script with its bliss.* imports resolved to scanstream",
        "legacy",
        own_signals=True,
    ),
    Command("completion", "print a shell completion script (bash or zsh)", "completion"),
)


def redis_url(args: argparse.Namespace) -> str:
    """Return the Redis URL a subcommand should use (this may start the embedded server)."""
    return shared_server.resolve_url(args.redis_url)


class _LazyCommands(SubParsers):
    """The subcommands; each one's module is imported and its arguments added when it is chosen."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        sub = self._name_parser_map.get(values[0])
        if sub is not None:
            _configure(sub)
        super().__call__(parser, namespace, values, option_string)


def _configure(sub: argparse.ArgumentParser) -> None:
    """Add the arguments of the subcommand ``sub`` (once)."""
    command: Command | None = sub.get_default("command_spec")
    if command is None or sub.get_default("run") is not None:
        return
    configure, run = command.load()
    configure(sub)
    accept_negative_values(sub)  # `delete --older-than -1h`: refused as a duration
    # The common options are accepted after the subcommand too
    # (`scanstream writer SESSION --redis-url URL`); SUPPRESS keeps the global ones when absent.
    sub.add_argument(
        "--redis-url", metavar="URL", default=argparse.SUPPRESS, help="as `scanstream --redis-url`"
    )
    sub.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="as `scanstream -v`"
    )
    sub.set_defaults(run=run, command_parser=sub)


def build_parser(configure: Iterable[str] | None = ()) -> argparse.ArgumentParser:
    """Return the argument parser of ``scanstream``, with every subcommand of :data:`COMMANDS`.

    Parameters
    ----------
    configure : iterable of str, or None
        Subcommands whose arguments are added now (None: all of them, which imports every
        subcommand's module); the others get theirs when the command line chooses them.
    """
    parser = argparse.ArgumentParser(
        prog="scanstream", description="Stream beamline scan data through Redis."
    )
    parser.add_argument("--version", action="version", version=f"scanstream {__version__}")
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        default=None,
        help="Redis server (redis://[USER:PASSWORD@]HOST:PORT, rediss://... or "
        "unix:///PATH); default: $SCANSTREAM_REDIS_URL, else your embedded server, "
        "started if needed",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v: info, -vv: debug)"
    )
    subparsers = cast(
        _LazyCommands,
        parser.add_subparsers(dest="command", metavar="COMMAND", action=_LazyCommands),
    )
    chosen = None if configure is None else set(configure)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        sub.set_defaults(command_spec=command, run=None)
        if chosen is None or command.name in chosen:
            _configure(sub)
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
        The exit code: 0 on success, 1 on a scanstream or connection error, 2 on a usage error
        (a Redis URL that names no server included), each said in one line on stderr,
        ``scanstream COMMAND: error: MESSAGE`` (:func:`~scanstream.cli.errors.error_line`);
        130 on Ctrl-C, 143 on SIGTERM and 129 on SIGHUP (which stop a command as Ctrl-C
        does); a subcommand may give its own meaning to 1 (docs/configuration.md, "Errors and
        exit codes").
    """
    try:
        parser = build_parser()
        # Parsing imports the subcommand's module (h5py, the writer...): a second or so.
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: return its code, so main() stays callable
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:  # Ctrl-C while the command starts: no traceback of the imports
        return 128 + signal.SIGINT
    args.standalone = argv is None  # the `scanstream` program: the process ends with main()
    configure_logging(args.verbose)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    url, origin = url_origin(args)
    problem = url_problem(url, origin)
    if problem is not None:
        print_error(args.command, problem)
        return 2
    spec: Command = args.command_spec
    signals = contextlib.nullcontext() if spec.own_signals else terminating_as_interrupt()
    try:
        with signals:
            code: int = args.run(args)
    except UsageError as exc:  # found after parsing: reported as argparse reports its own
        args.command_parser.print_usage(sys.stderr)
        print(f"{args.command_parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except (ScanstreamError, redis.RedisError) as exc:
        line = describe_failure(exc, url, origin)
        if line is None and not isinstance(exc, ScanstreamError):
            raise  # a Redis error that is not about reaching it: a defect, with its traceback
        # The messages of scanstream name URLs masked already; a redis-py error may quote one.
        print_error(args.command, _mask_urls(line or str(exc)))
        return 1
    except KeyboardInterrupt as exc:  # SIGTERM and SIGHUP too (signals.Terminated)
        return interrupt_exit_code(exc)
    except BrokenPipeError:
        # The reader went away (`scanstream ls | head`): stop quietly, as other tools do,
        # and keep the interpreter's final flush of stdout from raising again.
        if args.standalone:
            discard_stdout()
        return 128 + signal.SIGPIPE
    return code
