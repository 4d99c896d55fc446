"""``scanstream watch [SESSION...]``: follow sessions live in the terminal.

For every scan of the sessions it prints a line when the scan starts and when it ends (state,
points, error), then its saving verdict once the writer has recorded it; a row per point for
slow step scans (:class:`~scanstream.cli.scan_display.PointTable`, which gives way when points
come faster than they can be read), and the last value of every 0D channel: a line refreshed
in place on a terminal, a line every few seconds otherwise, and once more at the scan's end.

One walker thread per session reads Redis (only 0D channels' data streams: images and
spectra are not read); they hand their events to the main thread through a queue, which is
the only one to print, so lines of several sessions and scans never garble each other.
Ctrl-C stops the walkers and ends the command (exit code 130); ``--timeout`` ends it after
that many seconds without any event (exit code 0). A server lost while the watch runs is
said at once and retried until it answers, however long it takes; the sessions are then
watched again (a server back without its data too, said in one line).
"""

from __future__ import annotations

import argparse
import datetime
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from .._transport.connection import DataStore
from .._transport.retry import OUTAGE_REMINDER
from .._transport.shared_server import resolve_url
from ..admin.registry import writer_status
from ..admin.wording import counted
from ..exceptions import RedisUnreachableError, ServerResetError
from ..models import SavingState, SavingVerdict
from ..subscribe.data_nodes import ChannelNode
from ..subscribe.events import Event, EventType, StopHandler
from ..subscribe.nodes import DataNode
from ..subscribe.tree import ScanNode, get_session_node
from .errors import describe_server, url_origin
from .scan_display import PointTable, Row, short_name
from .signals import interrupt_exit_code
from .usage import session_name

__all__ = ["configure_watch", "run_watch"]

#: Seconds between refreshes of the values line on a terminal, and elsewhere.
TTY_REFRESH = 0.1
PIPE_REFRESH = 2.0
#: Seconds between a server found reset and the next watch of it.
RESUME_DELAY = 1.0
_FINAL = (SavingState.SAVED, SavingState.FAILED, SavingState.NOT_SAVED)


def configure_watch(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``scanstream watch``."""
    parser.add_argument(
        "sessions",
        nargs="*",
        type=session_name,
        metavar="SESSION",
        help="sessions to follow (default: every session, also those created later)",
    )
    parser.add_argument(
        "--no-rows", action="store_true", help="no row per point, only the last values"
    )
    parser.add_argument(
        "--save-wait",
        type=_positive,
        default=60.0,
        metavar="S",
        help="seconds to wait after a scan's end for its saving verdict (default 60)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=None,
        metavar="S",
        help="stop after S seconds without any event (default: run until Ctrl-C)",
    )


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def run_watch(args: argparse.Namespace) -> int:
    """Follow the sessions until Ctrl-C (exit code 130) or ``--timeout`` (exit code 0).

    A server that goes away while the watch runs is said at once (the store's outage line,
    within a second or two), retried for as long as the watch runs, and said back when it
    answers; the sessions are then watched again. One that comes back without its data is
    said in one line, and followed again as a new watch would. One that cannot be reached
    at the start fails the command (exit code 1).
    """
    url, origin = url_origin(args)
    url = resolve_url(url)
    print(describe_server(url, origin), file=sys.stderr)
    store = _open_store(url)
    try:
        while True:
            watcher = _Watcher(store, rows=not args.no_rows, save_wait=args.save_wait)
            try:
                return watcher.run(args.sessions, args.timeout)
            except KeyboardInterrupt as exc:  # SIGTERM too (signals.Terminated)
                # Walkers blocked on a server that went away would each wait out the outage
                # budget before they stop (then their join's 5 s): they give up now.
                store.stop_riding_out()
                watcher.clear_line()
                return interrupt_exit_code(exc)
            except (RedisUnreachableError, ServerResetError) as exc:
                if not watcher.watching:
                    raise
                lost: Exception = exc
            finally:
                watcher.stop()
            watcher.clear_line()
            # A monitor outlives its server's outages and restarts: the writer does too.
            if isinstance(lost, RedisUnreachableError) and _back_with_its_data(store):
                why = (
                    "the walks of the sessions gave up during the outage: scans started "
                    "meanwhile are not shown (`scanstream ls` lists them)"
                )
            else:
                why = str(lost) if isinstance(lost, ServerResetError) else _RESET
                store.close()  # it refuses the reset server for good
                time.sleep(RESUME_DELAY)
                store = _open_store(url)
            print(f"scanstream watch: {why}; watching again (Ctrl-C to stop)", file=sys.stderr)
    finally:
        store.close()


_RESET = "the server came back without its data (restarted without persistence, or flushed)"


def _open_store(url: str) -> DataStore:
    """The watch's store: its outage lines say that the watch retries until Ctrl-C."""
    store = DataStore(url)
    notice = store.outage_notice
    if notice is not None:
        notice.consequence = "scanstream watch retries until it answers (Ctrl-C to stop)"
        notice.reminder = OUTAGE_REMINDER
    return store


def _back_with_its_data(store: DataStore) -> bool:
    """Wait until the server answers again, for as long as it takes (Ctrl-C ends it); False
    when it came back without its data (the store refuses it then)."""
    while True:
        try:
            store.redis.ping()  # the store's outage line says when it answers again
        except RedisUnreachableError:
            continue  # one outage budget more: the store reminds of it at long intervals
        except ServerResetError:
            return False
        return True


def _master_of(node: DataNode) -> str:
    """The name of the top master a channel belongs to (the node right below the scan)."""
    while node.parent is not None and not isinstance(node.parent, ScanNode):
        node = node.parent
    return node.name


def _is_scalar_channel(node: DataNode) -> bool:
    """A 0D channel worth showing: not the timer's epoch (``elapsed_time`` says the same)."""
    return isinstance(node, ChannelNode) and node.shape == () and node.short_name != "epoch"


@dataclass
class _Master:
    """The 0D channels of one top master of a scan, and their points not shown in a row yet."""

    channels: list[ChannelNode] = field(default_factory=list)
    pending: dict[str, deque[float]] = field(default_factory=dict)
    next_index: int = 0

    def add(self, channel: ChannelNode) -> None:
        self.channels.append(channel)
        # Motors first, as BLISS prints them; the others in their order of creation.
        self.channels.sort(key=lambda c: not c.name.startswith("axis:"))
        self.pending[channel.name] = deque()

    def rows(self) -> list[tuple[int, Row]]:
        """The points every channel has now, as rows; they leave ``pending``."""
        out = []
        while self.channels and all(self.pending[c.name] for c in self.channels):
            row = [(c.name, c.unit, self.pending[c.name].popleft()) for c in self.channels]
            out.append((self.next_index, row))
            self.next_index += 1
        return out


@dataclass
class _Scan:
    """What the watcher knows of one running scan."""

    node: ScanNode
    masters: dict[str, _Master] = field(default_factory=dict)
    last: dict[str, tuple[str | None, float]] = field(default_factory=dict)
    points: dict[str, int] = field(default_factory=dict)
    table: PointTable | None = None


class _Watcher:
    """Walker threads (one per session) feeding the main thread, which prints."""

    def __init__(
        self, store: DataStore, *, rows: bool, save_wait: float, out: IO[str] | None = None
    ) -> None:
        self.store = store
        self.show_rows = rows
        self.save_wait = save_wait
        self.out = out if out is not None else sys.stdout
        self.err = sys.stderr
        self.tty = bool(getattr(self.err, "isatty", lambda: False)())
        self.events: queue.Queue[tuple[str, Event | BaseException]] = queue.Queue()
        self.stop_handler = StopHandler()
        self.threads: dict[str, threading.Thread] = {}
        self.scans: dict[str, _Scan] = {}
        self.verdicts: dict[str, tuple[ScanNode, float]] = {}  # db_name -> (node, deadline)
        self.line_shown = False
        self.last_refresh = 0.0
        self.last_table: str | None = None
        self.watching = False  # the sessions were found and their walkers started

    # --- threads -----------------------------------------------------------------------------

    def follow(self, session: str, from_start: bool = False) -> None:
        """Start the walker of ``session``; ``from_start``: a session that appeared during
        the watch, whose scans are all new (its first may have started before this walk)."""
        node = get_session_node(session, store=self.store)
        thread = threading.Thread(
            target=self._walk,
            args=(session, node, from_start),
            name=f"watch {session}",
            daemon=True,
        )
        self.threads[session] = thread
        thread.start()

    def _walk(self, session: str, node: Any, from_start: bool) -> None:
        try:
            for event in node.walk_on_new_events(
                include_filter=lambda n: n.type == "scan" or _is_scalar_channel(n),
                from_next=not from_start,
                stop_handler=self.stop_handler,
            ):
                self.events.put((session, event))
        except BaseException as exc:  # handed to the main thread, which reports it
            self.events.put((session, exc))

    def stop(self) -> None:
        """Stop and join the walkers."""
        self.stop_handler.stop()
        for thread in self.threads.values():
            thread.join(timeout=5)

    # --- the main loop -----------------------------------------------------------------------

    def run(self, sessions: list[str], timeout: float | None) -> int:
        """Print events until ``timeout`` seconds pass without one; return the exit code."""
        every = not sessions
        # A session named twice gets one walker: two would show each event twice (and the
        # second copy of its points found the rows already taken: IndexError).
        sessions = list(dict.fromkeys(sessions))
        known = set(self.store.sessions())
        for session in sessions or sorted(known):
            if session not in known:
                self.say(f"session {session} does not exist yet: waiting for its first scan")
            self.follow(session)
        if every:
            self.say(
                f"watching {counted(len(known), 'session')}: "
                f"{', '.join(sorted(known)) or 'none yet'}; "
                "new sessions are followed when they appear (Ctrl-C to stop)"
            )
        else:
            self.say(f"watching {', '.join(sessions)} (Ctrl-C to stop)")
        self.watching = True
        idle_since = time.monotonic()
        next_poll = 0.0
        while True:
            try:
                session, item = self.events.get(timeout=TTY_REFRESH)
            except queue.Empty:
                pass
            else:
                idle_since = time.monotonic()
                if isinstance(item, BaseException):
                    raise item
                self.handle(session, item)
            # Also between events: a scan sending points faster than TTY_REFRESH never
            # leaves the queue empty, and its values line must refresh all the same.
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + 0.5
                self.poll_verdicts()
                if every:
                    for session in sorted(set(self.store.sessions()) - set(self.threads)):
                        self.say(f"new session {session}: following it")
                        self.follow(session, from_start=True)
            self.refresh()
            if timeout is not None and now - idle_since >= timeout and not self.verdicts:
                self.clear_line()
                return 0

    # --- printing ----------------------------------------------------------------------------

    def clear_line(self) -> None:
        """Erase the values line on the terminal, so that the next line does not garble it."""
        if self.line_shown:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self.line_shown = False

    def say(self, text: str, stream: IO[str] | None = None) -> None:
        """Print one line (stdout by default), the values line cleared first."""
        self.clear_line()
        stream = stream or self.out
        stream.write(text + "\n")
        stream.flush()

    def _stamp(self, scan: ScanNode) -> str:
        return f"{datetime.datetime.now():%H:%M:%S} {scan.db_name}"

    def handle(self, session: str, event: Event) -> None:
        """One event of a walk."""
        event_type, node, data = event
        if isinstance(node, ScanNode):
            if event_type is EventType.NEW_NODE:
                self.started(node)
            elif event_type is EventType.END_SCAN:
                self.ended(node, data.data, data.description or {})
            return
        if not isinstance(node, ChannelNode):
            return
        scan = self.scans.get(node.scan.db_name)
        if scan is None:
            return  # a scan that started before the watch: its data is not followed
        if event_type is EventType.NEW_NODE:
            scan.masters.setdefault(_master_of(node), _Master()).add(node)
        elif event_type is EventType.NEW_DATA and data.block_size:
            self.values(scan, node, np.asarray(data.data, dtype=float).reshape(-1))

    def started(self, node: ScanNode) -> None:
        info = node.info
        npoints = info.get("npoints")
        size = counted(npoints, "point") if npoints else "unbounded"
        self.say(f"{self._stamp(node)} started  {info.get('title', node.name)}  ({size})")
        table = (
            PointTable(
                self.out,
                fast_note=f"({node.db_name}: points come faster than a row each can be shown: "
                "last values only)",
            )
            if self.show_rows
            else None
        )
        self.scans[node.db_name] = _Scan(node, table=table)

    def values(self, scan: _Scan, channel: ChannelNode, values: np.ndarray[Any, Any]) -> None:
        scan.last[channel.name] = (channel.unit, float(values[-1]))
        scan.points[channel.name] = scan.points.get(channel.name, 0) + len(values)
        if scan.table is None or not scan.table.active:
            return
        master = scan.masters.get(_master_of(channel))
        if master is None or channel.name not in master.pending:
            return
        master.pending[channel.name].extend(values.tolist())
        for index, row in master.rows():
            if self.last_table != scan.node.db_name and self.last_table is not None:
                self.say(f"-- {scan.node.db_name} --")
            self.last_table = scan.node.db_name
            self.clear_line()
            scan.table(_master_of(channel), index, row)
            if not scan.table.active:  # too fast for rows: keep only the last values
                master.pending.clear()
                break

    def ended(self, node: ScanNode, state: Any, end: dict[str, Any]) -> None:
        scan = self.scans.pop(node.db_name, None)
        name = getattr(state, "name", None) or node.state.name
        error = end.get("error")
        lengths = end.get("lengths") or {}
        points = max(lengths.values(), default=0) if lengths else 0
        self.say(
            f"{self._stamp(node)} ended    {name}  {counted(points, 'point')}"
            + (f"  ({error})" if error else "")
        )
        if scan is not None and scan.last:
            self.say(f"    last values: {_values_text(scan.last)}")
        self.verdicts[node.db_name] = (node, time.monotonic() + self.save_wait)
        self.poll_verdicts()

    def poll_verdicts(self) -> None:
        """Print the saving verdicts that became final (or did not within ``save_wait``)."""
        for db_name, (node, deadline) in list(self.verdicts.items()):
            verdict = node.saving
            if verdict.state in _FINAL:
                self.say(f"{self._stamp(node)} {_verdict_text(verdict)}")
            elif verdict.state is SavingState.WAITING and not self._writer_follows(node):
                self.say(
                    f"{self._stamp(node)} NOT SAVED: no writer follows session "
                    f"{node.session_name}; run `scanstream writer {node.session_name}`"
                )
            elif time.monotonic() >= deadline:
                self.say(
                    f"{self._stamp(node)} saving not final after {self.save_wait:g} s: {verdict}"
                )
            else:
                continue
            del self.verdicts[db_name]

    def _writer_follows(self, node: ScanNode) -> bool:
        return writer_status(node.session_name, store=self.store) is not None

    def refresh(self) -> None:
        """The line of last values of the running scans whose rows are not shown."""
        shown = [s for s in self.scans.values() if s.last and not (s.table and s.table.active)]
        now = time.monotonic()
        if not shown or now - self.last_refresh < (TTY_REFRESH if self.tty else PIPE_REFRESH):
            return
        self.last_refresh = now
        text = "  ".join(
            f"{s.node.name} {max(s.points.values(), default=0)} pt: {_values_text(s.last)}"
            for s in shown
        )
        if self.tty:
            width = 200
            self.err.write("\r\x1b[K" + text[:width])
            self.err.flush()
            self.line_shown = True
        else:
            self.say(text, self.err)


def _values_text(last: dict[str, tuple[str | None, float]]) -> str:
    """``roby=0.5 mm diode=12.3``: motors first."""
    names = sorted(last, key=lambda n: not n.startswith("axis:"))
    return " ".join(
        f"{short_name(n)}={last[n][1]:.6g}" + (f" {last[n][0]}" if last[n][0] else "")
        for n in names
    )


def _verdict_text(verdict: SavingVerdict) -> str:
    if verdict.state is SavingState.SAVED:
        return str(verdict)
    if verdict.state is SavingState.NOT_SAVED:
        return f"not saved, by design: {verdict.reason or 'saving is off'}"
    return f"NOT SAVED: {verdict.reason or 'the writer failed'}"
