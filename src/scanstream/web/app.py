"""The ASGI application of ``scanstream web``: the page, its assets, a JSON API and live streams.

Routes (all GET; Redis is only read)::

    /                                   the page (static/index.html)
    /static/...                         its scripts, styles and the vendored uPlot
    /api/scans                          every stored scan, newest first (cached 1 s)
    /api/scan/{session}/{number}        one scan: state, saving verdict, nodes, scan_info
    /api/scan/.../live                  server-sent events: its decimated 0D columns, live
    /api/scan/.../spectrum?name=&index= one spectrum of a 1D channel (index -1: the last)
    /api/scan/.../waterfall?name=       the latest spectra of a 1D channel
    /api/scan/.../map?name=             a 0D channel of a mesh scan, with npoints1/npoints2
    /api/scan/.../image?name=&index=    one frame of a detector, read through its reference
    /api/scan/.../analysis?x=&y=a,b     peak, cen, com, fwhm of full curves (scanstream.analysis)

The token, when one is set, is checked on every request, streams included: from the
``Authorization: Bearer`` header, the ``scanstream_token`` cookie, or a ``token`` query
parameter (which also sets the cookie, so that a link with ``?token=`` opens the page).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._transport.connection import DataStore
from ..exceptions import (
    DecodingError,
    ImageNotSavedError,
    IndexNotYetThereError,
    ScanNotFoundError,
    SessionNotFoundError,
)
from . import catalog
from .live import Hub

__all__ = ["STATIC", "TOKEN_COOKIE", "create_app"]

logger = logging.getLogger(__name__)

#: The page's files, shipped as package data.
STATIC = Path(__file__).resolve().parent / "static"
#: The cookie that carries the token after a first ``?token=`` request.
TOKEN_COOKIE = "scanstream_token"
#: Seconds the scan list is reused between browsers (one listing per second at most).
LIST_CACHE = 1.0


class _TokenCheck:
    """ASGI middleware: refuse (401) any HTTP request that does not carry the token.

    Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which would buffer the
    server-sent event streams through its own queue.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    def _matches(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("authorization", "")
        bearer = header[7:] if header.lower().startswith("bearer ") else None
        query = request.query_params.get("token")
        if not (
            self._matches(bearer)
            or self._matches(request.cookies.get(TOKEN_COOKIE))
            or self._matches(query)
        ):
            refusal = Response(
                "scanstream web: a token is needed (open the URL `scanstream web` printed, "
                "with ?token=...)\n",
                status_code=401,
                media_type="text/plain",
            )
            await refusal(scope, receive, send)
            return
        if not self._matches(query):
            await self.app(scope, receive, send)
            return
        # A link with ?token= : the page's later requests carry it as a cookie.
        cookie = Response()
        cookie.set_cookie(TOKEN_COOKIE, query or "", httponly=True, samesite="strict")
        extra = [(k, v) for k, v in cookie.raw_headers if k == b"set-cookie"]

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(
    store: DataStore,
    sessions: list[str] | None = None,
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> Starlette:
    """Build the application.

    Parameters
    ----------
    store : DataStore
        The connection; only read from.
    sessions : list of str, optional
        Sessions shown; all the server holds when None or empty.
    token : str, optional
        When given, every request must carry it (see the module docstring).
    allowed_hosts : list of str, optional
        Host names the requests may name (``Host`` header), others get 400; None: any.
        A view bound to loopback accepts only loopback names, so that a web page whose name
        an attacker resolved to 127.0.0.1 (DNS rebinding) cannot read it from the browser.

    Returns
    -------
    starlette.applications.Starlette
        The ASGI application (serve it with uvicorn).
    """
    hub = Hub(store)
    listing: dict[str, Any] = {"at": 0.0, "value": None}
    listing_lock = asyncio.Lock()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def scans(request: Request) -> Response:
        async with listing_lock:
            if listing["value"] is None or time.monotonic() - listing["at"] > LIST_CACHE:
                listing["value"] = await run_in_threadpool(
                    catalog.list_all_scans, store, sessions or None
                )
                listing["at"] = time.monotonic()
        return JSONResponse(listing["value"])

    def _target(request: Request) -> tuple[str, int]:
        session = request.path_params["session"]
        if sessions and session not in sessions:
            raise SessionNotFoundError(f"session {session!r} is not shown by this server")
        return session, int(request.path_params["number"])

    async def _call(request: Request, func: Callable[..., dict[str, Any]], *args: Any) -> Response:
        try:
            session, number = _target(request)
            return JSONResponse(await run_in_threadpool(func, store, session, number, *args))
        except (SessionNotFoundError, ScanNotFoundError, KeyError) as exc:
            return _error(404, str(exc).strip("'\""))
        except IndexNotYetThereError as exc:
            return _error(409, str(exc))
        except (DecodingError, ImageNotSavedError) as exc:
            return _error(422, str(exc))

    async def scan(request: Request) -> Response:
        return await _call(request, catalog.describe_scan)

    def _name(request: Request) -> str:
        return request.query_params.get("name", "")

    def _index(request: Request) -> int:
        try:
            return int(request.query_params.get("index", "-1"))
        except ValueError:
            return -1

    async def spectrum(request: Request) -> Response:
        return await _call(request, catalog.spectrum, _name(request), _index(request))

    async def waterfall(request: Request) -> Response:
        return await _call(request, catalog.waterfall, _name(request))

    async def mesh_map(request: Request) -> Response:
        return await _call(request, catalog.mesh_map, _name(request))

    async def image(request: Request) -> Response:
        return await _call(request, catalog.image_frame, _name(request), _index(request))

    async def analysis(request: Request) -> Response:
        ys = [y for y in request.query_params.get("y", "").split(",") if y]
        return await _call(request, catalog.analyse, request.query_params.get("x", "#"), ys)

    async def live(request: Request) -> Response:
        try:
            session, number = _target(request)
            stream = hub.stream(session, number)
            first = await stream.__anext__()  # a missing scan fails here, as a 404
        except (SessionNotFoundError, ScanNotFoundError) as exc:
            return _error(404, str(exc))

        async def events() -> AsyncIterator[str]:
            try:
                yield f"data: {json.dumps(first, allow_nan=False)}\n\n"
                async for message in stream:
                    if message.get("keepalive"):
                        yield ": keepalive\n\n"
                    else:
                        yield f"data: {json.dumps(message, allow_nan=False)}\n\n"
            finally:
                await stream.aclose()

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await hub.close()

    prefix = "/api/scan/{session}/{number:int}"
    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/scans", scans),
            Route(prefix, scan),
            Route(prefix + "/live", live),
            Route(prefix + "/spectrum", spectrum),
            Route(prefix + "/waterfall", waterfall),
            Route(prefix + "/map", mesh_map),
            Route(prefix + "/image", image),
            Route(prefix + "/analysis", analysis),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
    )
    if token:
        app.add_middleware(_TokenCheck, token=token)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.state.hub = hub
    return app
