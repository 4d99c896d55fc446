"""Garbage the chaos run writes over the keys of one scan (running or finished).

Each damage takes the store, the scan number and a random generator, changes one key of that
scan (names from ``_protocol/keys.py``) and returns what it did. :func:`damage` picks the
scan: the latest announced (most often still running) or an earlier, finished one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from scanstream import DataStore
from scanstream._protocol import entries

HUGE = 8 * 1024 * 1024  # bytes of a "huge value"


def _junk(rng: random.Random, size: int = 32) -> bytes:
    return bytes(rng.randrange(256) for _ in range(size))


def _data_keys(store: DataStore, session: str, number: int) -> list[str]:
    """The scan's data streams (found by trying node indices: no KEYS)."""
    keys = [store.keys.scan_data(session, number, i) for i in range(1, 12)]
    pipe = store.redis.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    return [k for k, there in zip(keys, pipe.execute(), strict=True) if there]


def _hash(store: DataStore, session: str, number: int) -> str:
    return store.keys.scan(session, number)


def _events(store: DataStore, session: str, number: int) -> str:
    return store.keys.scan_events(session, number)


def _lease(store: DataStore, session: str, number: int) -> str:
    return store.keys.scan_lease(session, number)


def _data(store: DataStore, session: str, number: int, rng: random.Random) -> str | None:
    keys = _data_keys(store, session, number)
    return rng.choice(keys) if keys else None


def _string(store: DataStore, key: str, rng: random.Random) -> str:
    store.redis.delete(key)
    store.redis.set(key, _junk(rng))
    return "replaced by a string of junk bytes"


def _list(store: DataStore, key: str, rng: random.Random) -> str:
    store.redis.delete(key)
    store.redis.rpush(key, _junk(rng))
    return "replaced by a list"


def _delete(store: DataStore, key: str, rng: random.Random) -> str:
    store.redis.delete(key)
    return "deleted"


def _junk_entry(store: DataStore, key: str, rng: random.Random) -> str:
    store.redis.xadd(key, {_junk(rng, 4): _junk(rng)})
    return "a stream entry of junk bytes added"


def _junk_field(field: str) -> Callable[[DataStore, str, random.Random], str]:
    def do(store: DataStore, key: str, rng: random.Random) -> str:
        store.redis.hset(key, field, _junk(rng))
        return f"field {field} set to junk bytes"

    return do


def _huge_field(store: DataStore, key: str, rng: random.Random) -> str:
    store.redis.hset(key, "info", b"{" + b"x" * HUGE)
    return f"field info set to {HUGE} bytes"


def _huge_entry(store: DataStore, key: str, rng: random.Random) -> str:
    store.redis.xadd(key, {"data": b"\x00" * HUGE, "n": "1"})
    return f"a stream entry of {HUGE} bytes added"


def _junk_new_node(store: DataStore, key: str, rng: random.Random) -> str:
    fields = {"event": "NEW_NODE", "node": _junk(rng, 3), "type": "channel", "info": _junk(rng)}
    store.redis.xadd(key, fields)
    return "a NEW_NODE entry of junk added"


#: damage name -> (which key, what is done to it)
DAMAGES: dict[str, tuple[str, Callable[[DataStore, str, random.Random], str]]] = {
    "hash string": ("hash", _string),
    "hash deleted": ("hash", _delete),
    "hash state junk": ("hash", _junk_field("state")),
    "hash info junk": ("hash", _junk_field("info")),
    "hash number junk": ("hash", _junk_field("number")),
    "hash info huge": ("hash", _huge_field),
    "events string": ("events", _string),
    "events deleted": ("events", _delete),
    "events junk entry": ("events", _junk_entry),
    "events junk NEW_NODE": ("events", _junk_new_node),
    "data string": ("data", _string),
    "data list": ("data", _list),
    "data deleted": ("data", _delete),
    "data junk entry": ("data", _junk_entry),
    "data huge entry": ("data", _huge_entry),
    "lease string": ("lease", _string),
    "lease list": ("lease", _list),
}


def _session_keys(store: DataStore, session: str, number: int) -> dict[str, str]:
    """The session's keys a garbage write may hit without touching any scan's data."""
    keys = store.keys
    return {
        "saved set": keys.writer_saved(session),
        "writer claim": keys.writer_health(session),
        "number floor": keys.session_number_floor(session),
        "scan claim": keys.scan_claim(session, number),
        "failed-by set": keys.scan_failed_by(session, number),
        "pool set": keys.writer_pool(session),
        "pool settings": keys.writer_pool_settings(session),
    }


#: Session keys: what is done to them (a damage that must cost no scan its data).
SESSION_DAMAGES: dict[str, Callable[[DataStore, str, random.Random], str]] = {
    "string": _string,
    "list": _list,
    "deleted": _delete,
}


def damage_session(store: DataStore, session: str, rng: random.Random) -> dict[str, Any]:
    """Garbage over one of the session's keys (writer claim, saved set, pool records...)."""
    latest = store.redis.xrevrange(store.keys.session_scans(session), count=1)
    number = next((n for _, f in latest if (n := entries.parse_new_scan(f)) is not None), 1)
    members = store.redis.smembers(store.keys.writer_pool(session))
    targets = _session_keys(store, session, number)
    if members and store.redis.type(store.keys.writer_pool(session)) == b"set":
        owner = rng.choice(sorted(members)).decode(errors="replace")
        targets["member record"] = store.keys.writer_member(session, owner)
    which = rng.choice(sorted(targets))
    how = rng.choice(sorted(SESSION_DAMAGES))
    what = SESSION_DAMAGES[how](store, targets[which], rng)
    return {"session_key": which, "kind": f"{which} {how}", "key": targets[which], "what": what}


def damage(store: DataStore, session: str, rng: random.Random) -> dict[str, Any] | None:
    """Damage one key of one scan of ``session``; return what was done (None: no scan yet)."""
    latest = store.redis.xrevrange(store.keys.session_scans(session), count=30)
    numbers = [n for _, f in latest if (n := entries.parse_new_scan(f)) is not None]
    if not numbers:
        return None
    number = numbers[0] if rng.random() < 0.5 else rng.choice(numbers)
    kind = rng.choice(list(DAMAGES))
    which, do = DAMAGES[kind]
    if which == "data":
        key = _data(store, session, number, rng)
        if key is None:
            return None
    else:
        key = {"hash": _hash, "events": _events, "lease": _lease}[which](store, session, number)
    with_type = store.redis.type(_hash(store, session, number))
    state = (
        store.redis.hget(_hash(store, session, number), "state") if with_type == b"hash" else None
    )
    what = do(store, key, rng)
    return {
        "number": number,
        "kind": kind,
        "key": key,
        "what": what,
        "state_before": state.decode(errors="replace") if isinstance(state, bytes) else None,
        "hash_type_before": with_type.decode(),
        "time": time.time(),
    }
