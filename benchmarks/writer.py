"""(3) Writer figures: need ``scanstream.writer.WriterService`` (not there yet: skipped)."""

from __future__ import annotations

from .harness import Figure


def run(url: str, quick: bool) -> list[Figure]:
    try:
        from scanstream.writer.service import WriterService  # noqa: F401
    except ImportError:
        return []
    return []
