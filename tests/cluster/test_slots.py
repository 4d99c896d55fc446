"""No command or script spans two cluster slots, and the keys spread over the slots as designed.

Two checks. Statically, on the key builders of ``_protocol/keys.py`` and the Lua scripts: the
keys of one scan share one slot, those of one session another, and a script derives every key
it touches from its first key. Dynamically, on the local cluster: a workload touching every
path (publish, session and scan walks, lease expiry, the writer, ``ls``, ``delete``) must
raise no CROSSSLOT error, neither in redis-py (which refuses a multi-key command, a script or
a transaction naming keys of two slots before sending it) nor on any node (which refuses a
script touching a key outside its declared slot); the nodes' error counters are read after it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.crc import key_slot

from scanstream import (
    DataStore,
    EventType,
    ScanState,
    Settings,
    create_session,
    get_session_node,
)
from scanstream._protocol import scripts
from scanstream._protocol.keys import Keys
from scanstream.admin import delete_scans, list_sessions, server_memory
from scanstream.writer import WriterService, saved_scans

from .cluster_nodes import LocalCluster

SESSIONS = ["s", "id23_eh1", "a.b-c"]


def _slot(key: str) -> int:
    return key_slot(key.encode())


def test_keys_of_one_scan_share_a_slot_and_of_one_session_another() -> None:
    keys = Keys("pfx")
    for session in SESSIONS:
        session_keys = [
            keys.session_scans(session),
            keys.session_counter(session),
            keys.session_number_floor(session),
            keys.writer_saved(session),
            # Pool mode: the claim script reads a scan's claim, the saved set and the writers
            # that failed the scan in one call.
            keys.scan_claim(session, 7),
            keys.scan_failed_by(session, 7),
            keys.writer_pool(session),
            keys.writer_member(session, "host:1:abc"),
            keys.writer_pool_settings(session),
        ]
        assert len({_slot(k) for k in session_keys}) == 1, session_keys
        for number in (1, 2, 77, 10**6):
            scan_keys = [
                keys.scan(session, number),
                keys.scan_events(session, number),
                keys.scan_lease(session, number),
                *(keys.scan_data(session, number, i) for i in (0, 1, 500)),
            ]
            assert len({_slot(k) for k in scan_keys}) == 1, scan_keys


def test_scans_spread_over_the_slots() -> None:
    keys = Keys()
    slots = [_slot(keys.scan("id23_eh1", n)) for n in range(1, 301)]
    # 300 scans over 16384 slots: nearly all distinct, and in every third of the slot range
    # (each of the test cluster's three masters).
    assert len(set(slots)) > 290
    assert {s * 3 // 16384 for s in slots} == {0, 1, 2}


def test_scripts_touch_only_keys_derived_from_their_first_key() -> None:
    keys = Keys()
    # The scripts derive data stream names as KEYS[1] .. ':data:' .. node: the builder's form.
    assert keys.scan_data("s", 3, 7) == keys.scan("s", 3) + ":data:7"
    lua_files = sorted(p.name for p in Path(scripts.__file__).parent.glob("*.lua"))
    assert lua_files == [
        "create_scan.lua",
        "delete_scan.lua",
        "end_scan.lua",
        "prepare_scan.lua",
        "set_node_info.lua",
    ]
    for name in lua_files:
        text = (Path(scripts.__file__).parent / name).read_text()
        code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
        # Every key a redis.call names is a local bound to KEYS[..] or derived from `scan`.
        assert "local scan, events, lease = KEYS[1], KEYS[2], KEYS[3]" in code
        for derived in re.findall(r"(\w+) \.\. ':data:'", code):
            assert derived == "scan", (name, derived)
        assert "redis.call('KEYS'" not in code
        # KEYS[4], the session's stream, only where the script says it is for a single
        # server (scripts.py passes it only when the store is not a cluster).
        if name in ("create_scan.lua", "prepare_scan.lua", "end_scan.lua"):
            assert "KEYS[4]" in code and "a single server" in text, name
        else:
            assert "KEYS[4]" not in code, name
        assert "KEYS[5]" not in code, name
    script_keys = scripts._scan_keys(keys, "s", 3)
    assert len({_slot(k) for k in script_keys}) == 1


class _SlotErrors:
    """Every CROSSSLOT refusal: redis-py's (counted by wrapping its slot check) and the nodes'."""

    def __init__(self, cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cluster = cluster
        self.client_side: list[str] = []
        original = redis.cluster.RedisCluster.determine_slot

        # Commands, scripts, and the commands queued in pipelines and transactions all get
        # their slot here (a transaction of two slots is refused later, in the thread that
        # runs it: the workload then fails, a publisher's scan first).
        def determine_slot(client: object, *args: object) -> object:
            try:
                return original(client, *args)  # type: ignore[arg-type]
            except redis.exceptions.RedisClusterException as exc:
                self.client_side.append(f"{args[:3]}: {exc}")
                raise

        monkeypatch.setattr(redis.cluster.RedisCluster, "determine_slot", determine_slot)
        for node in cluster.nodes:
            with node.client() as client:
                client.config_resetstat()

    def server_side(self) -> dict[int, dict[str, int]]:
        """The nodes' refusals: {port: {"CROSSSLOT": n, "script": n}} (only nonzero ones).

        A node refuses a command naming keys of two slots with CROSSSLOT, and fails a script
        that touches a key outside its slot; a script's first EVALSHA on a node fails with
        NOSCRIPT (then it is sent whole), which is not counted. (Every other error reply is
        ignored: redis-py's handshake gets one ERR per connection from Valkey.)
        """
        found = {}
        for node in self.cluster.nodes:
            with node.client() as client:
                errors = client.info("errorstats")
                commands = client.info("commandstats")
            crossslot = int(errors.get("errorstat_CROSSSLOT", {}).get("count", 0))
            noscript = int(errors.get("errorstat_NOSCRIPT", {}).get("count", 0))
            script = sum(
                int(commands.get(f"cmdstat_{name}", {}).get("failed_calls", 0))
                for name in ("eval", "evalsha")
            )
            counts = {"CROSSSLOT": crossslot, "script": script - noscript}
            if any(counts.values()):
                found[node.port] = {k: n for k, n in counts.items() if n}
        return found

    def calls(self, command: str) -> int:
        """Calls of ``command`` (as INFO commandstats names it) over every node."""
        total = 0
        for node in self.cluster.nodes:
            with node.client() as client:
                stats = client.info("commandstats")
            total += int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
        return total


@pytest.fixture
def slot_errors(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> _SlotErrors:
    return _SlotErrors(cluster, monkeypatch)


def test_the_check_sees_a_command_spanning_two_slots(
    redis_url: str, slot_errors: _SlotErrors
) -> None:
    with DataStore(redis_url) as store:
        keys = store.keys
        # (DEL, EXISTS, MGET... of several slots are split by redis-py: not atomic, but not
        # refused; scanstream sends them only with keys of one scan.)
        with pytest.raises(redis.exceptions.RedisClusterException):
            store.redis.xread({keys.scan_events("s", 1): 0, keys.session_scans("s"): 0})
        assert slot_errors.client_side
        # A script declaring one key and touching another slot's: refused by the node.
        with pytest.raises(redis.exceptions.ResponseError, match="non local key|same slot"):
            store.redis.eval(
                "return redis.call('GET', ARGV[1])", 1, keys.scan("s", 1), keys.scan("s", 2)
            )
    assert slot_errors.server_side()


# A publisher killed mid-scan: no END, its lease lapses.
PUBLISHER = """
import sys, time
from scanstream import DataStore, Settings, create_session
store = DataStore(settings=Settings(redis_url=sys.argv[1], lease_time=0.5))
scan = create_session("s", store=store).create_scan("crashed", {"save": False})
scan.create_container("timer").create_channel("x").emit([1.0, 2.0])
scan.flush()
print(scan.number, flush=True)
time.sleep(60)
"""


def test_the_whole_workload_stays_within_slots(
    redis_url: str, slot_errors: _SlotErrors, tmp_path: Path
) -> None:
    settings = Settings(redis_url=redis_url, lease_time=0.5, retention_time=60)
    with DataStore(settings=settings) as store:
        service = WriterService(["s"], root=tmp_path, store=store, flush_period=0.05)
        service.start()
        try:
            session = create_session("s", store=store)
            events: list[tuple[EventType, str, object]] = []
            session_node = get_session_node("s", store=store)
            walk = session_node.walk_on_new_events(timeout=15)

            def follow() -> None:  # a session walk following two scans at once
                for event_type, node, data in walk:
                    events.append((event_type, node.name, data))
                    if event_type is EventType.END_SCAN and node.name.endswith("_crashed"):
                        return

            thread = threading.Thread(target=follow, daemon=True)
            thread.start()
            crasher = subprocess.Popen(
                [sys.executable, "-c", PUBLISHER, redis_url], stdout=subprocess.PIPE, text=True
            )
            try:
                with session.create_scan("first", {"save": True}) as scan:
                    timer = scan.create_container("timer")
                    channels = [timer.create_channel(f"c{i}") for i in range(3)]
                    image = timer.create_lima("cam", np.uint16, (4, 5), saving_mode="NOSAVING")
                    scan.prepared()
                    for i in range(50):
                        for ch in channels:
                            ch.emit(float(i))
                        image.emit_unsaved(1)
                assert crasher.stdout is not None
                crashed_number = int(crasher.stdout.readline())
            finally:
                crasher.kill()
                crasher.wait(10)
                if crasher.stdout is not None:
                    crasher.stdout.close()
            thread.join(15)
            assert not thread.is_alive(), [(t, n) for t, n, _ in events]
            ends = {
                name.split("_", 1)[1]: data.description["state"]  # type: ignore[attr-defined]
                for t, name, data in events
                if t is EventType.END_SCAN
            }
            assert ends == {"first": ScanState.DONE, "crashed": ScanState.KILLED}
            deadline = time.monotonic() + 20
            while scan.number not in saved_scans("s", store=store):
                assert time.monotonic() < deadline, "the scan was not saved"
                time.sleep(0.05)
            (summary,) = list_sessions(store)
            assert sorted(s.number for s in summary.scans) == sorted([scan.number, crashed_number])
            assert server_memory(store)["used_memory"] > 0
            report = delete_scans(store, "s", force=True)
            assert sorted(d.number for d in report.deleted) == sorted([scan.number, crashed_number])
            assert list_sessions(store)[0].scans == []
            for number in (scan.number, crashed_number):  # nothing left on the scan's master
                pattern = store.keys.scan("s", number) + "*"
                with slot_errors.cluster.master_of(pattern).client() as client:
                    assert client.keys(pattern) == []
        finally:
            service.stop()
    assert slot_errors.client_side == []
    assert slot_errors.server_side() == {}
    # Walks find their XREAD's slot themselves: no COMMAND GETKEYS round trip per read.
    assert slot_errors.calls("command|getkeys") == 0
