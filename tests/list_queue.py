"""A data queue for the sender's tests: the smallest DataQueue, one byte string a point."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from scanstream.publish.sender import Sender


class ListQueue:
    """The smallest :class:`DataQueue`: a list of byte strings, one point each."""

    def __init__(self, key: str, sender: Sender) -> None:
        self.key = key
        self.sender = sender
        self.sent = 0
        self.emitted = 0
        self.pending: list[bytes] = []
        self.given_back = threading.Event()

    def put(self, point: bytes) -> None:
        if not self.pending:
            self.sender.ready(self)
        self.pending.append(point)
        self.emitted += 1

    def take(self) -> list[bytes]:
        out, self.pending = self.pending, []
        return out

    def give_back(self, batches: list[bytes]) -> None:
        if not self.pending:
            self.sender.ready(self)
        self.pending[:0] = batches
        self.given_back.set()

    def drop(self) -> int:
        dropped, self.pending = self.emitted - self.sent, []
        self.emitted = self.sent
        return dropped

    def encode(self, batches: list[bytes]) -> list[tuple[Mapping[bytes, Any], int]]:
        return [({b"n": b"%d" % len(batches), b"d": b"".join(batches)}, len(batches))]
