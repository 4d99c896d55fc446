"""``scanstream web [--host H] [--port P] [--token T] [SESSION...]``: the browser view, served here.

Only argument checks and printing live here; the application is :mod:`scanstream.web`, imported
when the command runs (starlette and uvicorn cost an import that other subcommands need not
pay). Binding anything but a loopback address needs a token: the page shows every scan of the
server to whoever reaches the port.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket

from .._transport.connection import DataStore
from .._transport.shared_server import resolve_url
from .._transport.urls import mask_url
from .errors import print_error
from .usage import session_name

#: Host names a loopback-bound view accepts in requests.
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]

#: Where ``--token`` is read from when the option is not given (keeps it out of ``ps``).
TOKEN_ENV = "SCANSTREAM_WEB_TOKEN"


def configure_web(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``scanstream web``."""
    parser.add_argument(
        "sessions",
        nargs="*",
        type=session_name,
        metavar="SESSION",
        help="sessions to show (default: all)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; "
        "any other address needs --token)",
    )
    parser.add_argument(
        "--port", type=_port, default=8000, help="TCP port (default 8000; 0: a free one)"
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"secret every request must carry (default ${TOKEN_ENV}); "
        "the printed URL carries it once, the browser then keeps it in a cookie",
    )


def _port(text: str) -> int:
    """The ``type=`` of ``--port``: a TCP port number, 0 to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text} is not a TCP port (0 to 65535); give 8000, or 0 for a free one"
        )
    return port


def _listen_hint(exc: OSError, host: str) -> str:
    """What to do when binding failed: the port is taken or privileged, or the host is wrong."""
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {host!r} is no address of this machine; give one of its addresses"
    if exc.errno == errno.EACCES:
        return "ports below 1024 need privileges: choose a --port of 1024 or more, or 0"
    return "choose another --port, or 0 for a free one"


def is_loopback(host: str) -> bool:
    """True if ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_web(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; exit 2 on a refused binding or a bad port, 1 if it cannot listen."""
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        print_error(
            "web",
            f"refusing to listen on {args.host!r} without a token: anyone who "
            "reaches that address could read every scan. Give --token SECRET (or "
            f"${TOKEN_ENV}), or keep the default --host 127.0.0.1 and reach it through an "
            "SSH tunnel (ssh -L 8000:127.0.0.1:8000 HOST)",
        )
        return 2
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        # Listening now, before uvicorn starts: a browser opening the printed URL at once
        # waits in the backlog instead of being refused.
        sock.listen(128)
    except OSError as exc:
        sock.close()
        print_error(
            "web",
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
            f"({_listen_hint(exc, args.host)})",
        )
        return 1
    try:
        url = resolve_url(args.redis_url)
        from ..web import server  # lazily: see the module docstring

        with DataStore(url) as store:
            port = sock.getsockname()[1]
            shown = f"[{args.host}]" if family == socket.AF_INET6 else args.host
            link = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
            what = ", ".join(args.sessions) if args.sessions else "all sessions"
            print(
                f"scanstream web: {link}  ({what} of {mask_url(url)}; Ctrl-C to stop)",
                flush=True,
            )
            # Bound to loopback, requests must name a loopback host: a page of another site
            # resolved to 127.0.0.1 (DNS rebinding) gets 400. Elsewhere the token guards it.
            hosts = LOOPBACK_NAMES + [args.host] if is_loopback(args.host) else None
            server.serve(store, sock, sessions=args.sessions, token=token, allowed_hosts=hosts)
    finally:
        sock.close()
    return 0
