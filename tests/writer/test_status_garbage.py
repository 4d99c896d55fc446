"""``scanstream writer --status`` over a pool whose member records hold garbage.

Found by soak.chaos: one member record of another type (a list), of junk bytes, or a JSON
object without the fields of a member made ``--status`` (and ``writer_status``) raise, so an
operator saw an error instead of the live writers. The good members are listed, the bad
record is named with what is wrong with it, and the exit status is the pool's (0: a member
takes scans).
"""

from __future__ import annotations

import json
import time

import pytest

from scanstream.cli import main
from scanstream.writer import WriterService, pool_members, saved_scans, writer_status

from .conftest import wait_for

#: A member id that no process of this host has (a member of another host, so it is not
#: dropped as a dead local writer).
OTHER = "otherhost:4242:deadbeef"

GARBAGE = {
    "list": ("rpush", ["garbage"], "it is a list"),
    "junk bytes": ("set", b"\xa9\x00 junk", "not JSON"),
    "not an object": ("set", json.dumps([1, 2]), "not a JSON object"),
    "missing fields": ("set", json.dumps({"owner": OTHER}), "no field"),
    "wrong field type": ("set", "__WRONG__", "field"),
}


def _write(store, key: str, kind: str, good: dict) -> None:
    command, value, _ = GARBAGE[kind]
    if value == "__WRONG__":
        value = json.dumps({**good, "owner": OTHER, "errors": "no list", "pid": "x"})
    if command == "rpush":
        store.redis.rpush(key, *value)
    else:
        store.redis.set(key, value)


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_status_lists_the_good_members_and_names_the_unreadable_record(
    kind, store, session, tmp_path, capsys, redis_url
):
    service = WriterService(
        ["test_session"], root=tmp_path / "data", store=store, pool=True, isolate=False
    )
    with service:
        wait_for(lambda: pool_members("test_session", store=store), 5, "the pool member")
        (good,) = pool_members("test_session", store=store)
        key = store.keys.writer_member("test_session", OTHER)
        store.redis.sadd(store.keys.writer_pool("test_session"), OTHER)
        _write(store, key, kind, good)
        status = writer_status("test_session", store=store)
        assert status is not None and status["pool"] and status["writing"], status
        assert [m["owner"] for m in status["members"]] == [service.owner]
        ((where, reason),) = [(u["key"], u["reason"]) for u in status["unreadable"]]
        assert where == key and GARBAGE[kind][2] in reason, reason
        capsys.readouterr()
        started = time.monotonic()
        code = main(["--redis-url", redis_url, "writer", "--status", "test_session"])
        took = time.monotonic() - started
        out, err = capsys.readouterr()
        assert code == 0, (out, err)
        assert took < 0.5, took
        assert "Traceback" not in out + err and "Error" not in err, (out, err)
        assert service.owner in out, out
        (line,) = [line for line in out.splitlines() if "unreadable record" in line]
        assert f"unreadable record at {key}: " in line and GARBAGE[kind][2] in line, line
        # The writer itself goes on: its scans are saved.
        with session.create_scan("s") as scan:
            scan.create_container("timer").create_channel("timer:c").emit([1.0])
        wait_for(lambda: scan.number in saved_scans("test_session", store=store), 15, "saved")
        assert not writer_status("test_session", store=store)["errors"]


def test_status_of_a_pool_whose_only_records_are_garbage_exits_1(store, capsys, redis_url):
    """No member can be read (nor the pool's settings): no writer is known to take scans."""
    member = store.keys.writer_member("test_session", OTHER)
    settings = store.keys.writer_pool_settings("test_session")
    store.redis.sadd(store.keys.writer_pool("test_session"), OTHER)
    store.redis.set(member, b'{"owner": ')
    store.redis.rpush(settings, "garbage")
    status = writer_status("test_session", store=store)
    assert status is not None and status["pool"] and not status["writing"], status
    assert status["members"] == [] and status["started"] is None
    assert [u["key"] for u in status["unreadable"]] == [member, settings]
    assert pool_members("test_session", store=store) == []
    assert main(["--redis-url", redis_url, "writer", "--status", "test_session"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "Error" not in err, (out, err)
    assert f"unreadable record at {member}: not JSON" in out, out
    assert f"unreadable record at {settings}: it is a list" in out, out


def test_status_of_a_single_writer_whose_status_lacks_fields(store, capsys, redis_url):
    """A claim whose status JSON names an owner but not the rest: "no writer", no KeyError."""
    store.redis.hset(
        store.keys.writer_health("test_session"),
        mapping={"owner": OTHER, "status": json.dumps({"owner": OTHER})},
    )
    assert writer_status("test_session", store=store) is None
    assert main(["--redis-url", redis_url, "writer", "--status", "test_session"]) == 1
    out, err = capsys.readouterr()
    assert "no writer" in out and "Traceback" not in out + err and "Error" not in err, (out, err)
