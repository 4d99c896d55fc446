"""``scanstream web``: a live view of sessions and scans in the browser (docs/web.md).

One process serves the page, its assets (vendored: no internet needed) and a read-only JSON
and server-sent-events API over the subscriber API. :func:`scanstream.web.app.create_app`
builds the ASGI application; ``scanstream web`` (:mod:`scanstream.cli.web`) serves it with
uvicorn. This package imports starlette; ``import scanstream`` never loads it.
"""
