"""Serving the application with uvicorn on a socket the command line has bound already."""

from __future__ import annotations

import socket

import uvicorn

from .._transport.connection import DataStore
from .app import create_app

__all__ = ["serve"]


def serve(
    store: DataStore,
    sock: socket.socket,
    *,
    sessions: list[str] | None = None,
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> None:
    """Serve the view on ``sock`` until interrupted (SIGINT, SIGTERM).

    Parameters
    ----------
    store : DataStore
        The connection, only read from.
    sock : socket.socket
        A bound socket (binding first lets the caller report the real port of ``--port 0``).
    sessions : list of str, optional
        Sessions shown (default: all).
    token : str, optional
        Secret every request must carry.
    allowed_hosts : list of str, optional
        Host names requests may name (see :func:`~scanstream.web.app.create_app`).
    """
    app = create_app(store, sessions, token, allowed_hosts)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        # Live streams stay open: at Ctrl-C they are closed after this grace time.
        timeout_graceful_shutdown=1,
    )
    uvicorn.Server(config).run(sockets=[sock])
