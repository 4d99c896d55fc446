"""The error lines of every command, in one form: ``scanstream COMMAND: error: MESSAGE``
(:func:`error_line`, docs/configuration.md "Errors and exit codes"), and one line for each way
a command can fail to reach Redis: the URL (masked), where it came from (``--redis-url`` or
``$SCANSTREAM_REDIS_URL``) and what to do, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse

import redis

from .._transport.cluster import CLUSTER_SCHEMES
from .._transport.shared_server import ENV_URL
from .._transport.urls import mask_url
from ..exceptions import RedisUnreachableError

__all__ = [
    "SCHEMES",
    "describe_failure",
    "describe_server",
    "discard_stdout",
    "error_line",
    "print_error",
    "url_origin",
    "url_problem",
    "url_scheme_problem",
]

#: The URL schemes scanstream accepts: redis-py's, and the cluster ones (docs/cluster.md).
SCHEMES = ("redis://", "rediss://", "unix://", *(f"{name}://" for name in CLUSTER_SCHEMES))


def error_line(command: str | None, message: str) -> str:
    """``scanstream COMMAND: error: MESSAGE``: the form of every error line of every command.

    The form argparse gives its usage errors (``PROG: error: MESSAGE``), so that a script
    or a person finds every error of ``scanstream COMMAND`` the same way, whoever found it.

    Parameters
    ----------
    command : str or None
        The subcommand (``"ls"``); None before one is known (``scanstream: error: ...``).
    message : str
        What is wrong and what to do, on one line.
    """
    prog = f"scanstream {command}" if command else "scanstream"
    return f"{prog}: error: {message}"


def print_error(command: str | None, message: str) -> None:
    """Print :func:`error_line` on stderr."""
    print(error_line(command, message), file=sys.stderr)


def url_origin(args: argparse.Namespace) -> tuple[str | None, str]:
    """The URL a command will use and where it comes from; None: the embedded server."""
    if getattr(args, "redis_url", None):
        return args.redis_url, "--redis-url"
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL], f"${ENV_URL}"
    return None, "your embedded server (no --redis-url nor $SCANSTREAM_REDIS_URL)"


def url_scheme_problem(url: str | None, origin: str) -> str | None:
    """The message for a URL redis-py would refuse for its scheme, or None."""
    if url is None or url.startswith(SCHEMES):
        return None
    # mask_url finds a password only after a scheme: lend it one, then take it back.
    rest = url.split("://", 1)[1] if "://" in url else url
    masked = mask_url(f"redis://{rest}")
    shown = mask_url(url) if "://" in url else masked.removeprefix("redis://")
    return (
        f"the Redis URL {shown!r} (from {origin}) has no scheme redis-py knows; write "
        f"{masked}, rediss://... for TLS, unix:///path/to/redis.sock, or "
        "redis+cluster://host:port[,host:port...] for a Redis Cluster"
    )


def url_problem(url: str | None, origin: str) -> str | None:
    """The message for a URL that cannot name a server: its scheme (:func:`url_scheme_problem`),
    or, for ``redis://`` and ``rediss://``, a port that is not one, no host, a database that is
    not a number. None for a URL worth trying (or the embedded server's).

    redis-py raises a bare ValueError for the port (a traceback), and takes a missing host for
    localhost:6379 and a database that is no number for 0: it would use another server.
    """
    problem = url_scheme_problem(url, origin)
    if problem is not None or url is None or not url.startswith(("redis://", "rediss://")):
        return problem
    shown = mask_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (the property raises ValueError for a port that is not one)
    except ValueError as exc:
        return f"the Redis URL {shown!r} (from {origin}) is malformed: {exc}; {_URL_FORM}"
    if not parts.hostname:
        return f"the Redis URL {shown!r} (from {origin}) names no host; {_URL_FORM}"
    database = parts.path.strip("/")
    if database and not database.isdigit():
        return (
            f"the Redis URL {shown!r} (from {origin}) names database {database!r}, which is "
            f"not a number; {_URL_FORM}"
        )
    return None


_URL_FORM = "write redis://[USER:PASSWORD@]HOST[:PORT][/DB], PORT up to 65535 and DB a number"


def describe_failure(exc: BaseException, url: str | None, origin: str) -> str | None:
    """One line for a connection, password or permission failure; None for any other error."""
    where = f"Redis at {mask_url(url)}" if url else "your embedded server"
    came = f" (URL from {origin})" if url else ""
    text = str(exc)
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return (
            f"{where}{came} refused a command to this user: {text}; ask for a user with the "
            "rights of docs/access.md (readers, writers) or use another URL"
        )
    if (
        isinstance(exc, redis.exceptions.AuthenticationError)
        or "NOAUTH" in text
        or ("HELLO" in text and "authenticated" in text)
    ):
        if "NOAUTH" in text or "HELLO" in text or "required" in text.lower():
            problem = "requires a password and the URL gives none"
        else:
            problem = "refused the user name or password of the URL"
        return (
            f"{where}{came} {problem}; write them in the URL, "
            "redis://USER:PASSWORD@HOST:PORT (redis://:PASSWORD@HOST:PORT for the default user)"
        )
    if isinstance(exc, RedisUnreachableError):
        return f"{text}{came}" if came else text
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return f"{where}{came}: {text}; check the URL and that the server runs"
    return None


def describe_server(url: str, origin: str) -> str:
    """``Redis server: URL (from --redis-url)``, the password masked: the line commands print
    at start, so that attaching to another installation's embedded server shows."""
    if origin.startswith(("--", "$")):
        return f"Redis server: {mask_url(url)} (from {origin})"
    return f"Redis server: {mask_url(url)} ({origin})"


def discard_stdout() -> None:
    """Send what is still printed on stdout to /dev/null: its reader went away (``| head``).

    At the file descriptor, so that no later print, nor the interpreter's final flush of
    stdout, raises BrokenPipeError again. Not for an stdout without one (tests capture it).
    """
    try:
        fileno = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    os.dup2(os.open(os.devnull, os.O_WRONLY), fileno)
