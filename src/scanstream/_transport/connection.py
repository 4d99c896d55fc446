"""Connection to Redis: URL resolution, protocol version check, server-side scripts."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import Encoder
from redis.retry import Retry

from .._protocol.keys import DEFAULT_PREFIX, PROTOCOL_VERSION, Keys, check_session_name
from ..exceptions import InvalidArgumentError, ProtocolVersionError, SessionNotFoundError
from .vectored import ScatterPacker, vectored_connection_class

logger = logging.getLogger(__name__)


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise InvalidArgumentError(f"environment variable {name}={value!r} is not a number") from None


@dataclass(frozen=True)
class Settings:
    """Settings of a connection, from arguments or the environment.

    Attributes
    ----------
    redis_url : str or None
        ``redis://``, ``rediss://`` or ``unix://`` URL. None: ``SCANSTREAM_REDIS_URL``, else
        the user's embedded server (started on demand).
    prefix : str
        Prefix of every key (``SCANSTREAM_PREFIX``, default ``scanstream``).
    lease_time : float
        Seconds after which a running scan whose publisher stopped renewing its lease is
        declared KILLED (``SCANSTREAM_LEASE_TIME``, default 10).
    retention_time : float
        Seconds an ended scan stays in Redis (``SCANSTREAM_RETENTION_TIME``, default one
        day). 0 keeps it until deleted.
    max_unreachable_time : float
        Seconds a publisher keeps queuing points while Redis cannot be reached
        (``SCANSTREAM_MAX_UNREACHABLE_TIME``, default 30). Past it, the scan fails: ``emit``
        raises ``redis.exceptions.ConnectionError`` naming the scan, and the queued points
        are dropped instead of buffered without bound.
    retry : redis.retry.Retry or None
        redis-py retry policy of the connection pool, applied to every command on
        ``ConnectionError`` and ``TimeoutError``. None: :func:`default_retry` (exponential
        backoff with jitter, 10 ms to 1 s, 6 retries: about 2 s of outage hidden per command).
    """

    redis_url: str | None = None
    prefix: str = DEFAULT_PREFIX
    lease_time: float = 10.0
    retention_time: float = 86400.0
    retry: Retry | None = field(default=None, compare=False)
    max_unreachable_time: float = 30.0

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from ``SCANSTREAM_*`` environment variables, then ``overrides``."""
        values: dict[str, Any] = {
            "redis_url": os.environ.get("SCANSTREAM_REDIS_URL") or None,
            "prefix": os.environ.get("SCANSTREAM_PREFIX") or DEFAULT_PREFIX,
            "lease_time": _env_float("SCANSTREAM_LEASE_TIME", 10.0),
            "retention_time": _env_float("SCANSTREAM_RETENTION_TIME", 86400.0),
            "max_unreachable_time": _env_float("SCANSTREAM_MAX_UNREACHABLE_TIME", 30.0),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.lease_time <= 0:
            raise InvalidArgumentError(f"lease_time must be positive, got {settings.lease_time!r}")
        if settings.retention_time < 0:
            raise InvalidArgumentError(f"retention_time must be >= 0, got {settings.retention_time!r}")
        if settings.max_unreachable_time <= 0:
            raise InvalidArgumentError(
                f"max_unreachable_time must be positive, got {settings.max_unreachable_time!r}"
            )
        return settings


def default_retry() -> Retry:
    """The redis-py retry policy used when :class:`Settings` gives none.

    Retries network errors only (``ConnectionError``, ``TimeoutError``), never a refusal by
    the server. A retried write may have been applied before its reply was lost: the
    publisher makes its writes idempotent (data entry IDs are point indices, and a replayed
    entry is recognised as a duplicate), and readers ignore replayed lifecycle entries.
    """
    return _NetworkRetry(
        ExponentialWithJitterBackoff(base=0.01, cap=1.0),
        retries=6,
        supported_errors=(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
    )


# redis-py packs commands with hiredis when it is installed, which copies every large data
# payload into one string holding the GIL: a publisher loses a quarter of its throughput
# (docs/performance.md). Its pure-Python packer sends large values as separate buffers, and
# ours sends the parts of a Scattered value without joining them; the reply parser stays
# hiredis'. Stateless, so one instance serves every connection.
_COMMAND_PACKER = ScatterPacker(6000, Encoder("utf-8", "strict", False).encode)


def _refuse_reply_options(url: str, options: dict[str, Any]) -> None:
    """Raise InvalidArgumentError if the URL's query string changes the form of replies.

    Every reader here expects RESP2 replies of bytes, the client's defaults. redis-py passes
    ``?decode_responses=...`` (as a string, so even ``false`` turns decoding on) and
    ``?protocol=3`` from the URL to the connections, and they would break every read.
    """
    decode, protocol = options.get("decode_responses"), options.get("protocol")
    if decode or protocol not in (None, 2, "2"):
        option = f"decode_responses={decode!r}" if decode else f"protocol={protocol!r}"
        raise InvalidArgumentError(
            f"Redis URL {url!r}: option {option} is not supported (scanstream reads RESP2 "
            "replies as bytes); remove it from the URL's query string"
        )


class _NetworkRetry(Retry):
    """A Retry that never retries a refused authentication.

    redis-py's AuthenticationError is a ConnectionError: retried, a wrong or missing password
    would take seconds of back-off before the user sees the error.
    """

    def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None,
                        with_failure_count: bool = False) -> Any:
        def retryable(error: Exception) -> bool:
            if isinstance(error, redis.exceptions.AuthenticationError):
                return False
            return is_retryable(error) if is_retryable else True

        return super().call_with_retry(do, fail, retryable, with_failure_count)


# Ends a scan atomically: seals every data stream with its final length, appends END to the
# scan's event stream, records the state, drops the lease and applies the retention time.
# Run server-side so that a reader declaring a scan KILLED (lease expired) and a late
# publisher calling end() cannot both succeed, and so that END is never visible before the
# seals. The data stream keys are derived from the NEW_NODE entries; they share the scan's
# hash tag, hence its cluster slot.
# KEYS: scan hash, events stream, lease. ARGV: state, error, time, retention (s),
# only_if_lease_expired (0/1), info JSON or "".
_END_SCAN_LUA = """
local scan, events, lease = KEYS[1], KEYS[2], KEYS[3]
local state, err, now, retention = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('EXISTS', scan) == 0 then return {'missing', ''} end
local current = redis.call('HGET', scan, 'state')
if current == 'DONE' or current == 'USER_ABORTED' or current == 'KILLED' or current == 'FAILED' then
  return {'ended', current}
end
if ARGV[5] == '1' and redis.call('EXISTS', lease) == 1 then return {'alive', current} end
local lengths = {}
local data_keys = {}
for _, entry in ipairs(redis.call('XRANGE', events, '-', '+')) do
  local f = entry[2]
  local kv = {}
  for i = 1, #f, 2 do kv[f[i]] = f[i + 1] end
  -- A NEW_NODE replayed by a client retry appears twice: seal each stream once.
  if kv['event'] == 'NEW_NODE' and kv['type'] ~= 'container' and lengths[kv['node']] == nil then
    local key = scan .. ':data:' .. kv['node']
    local total = 0
    local seal_id = nil
    local already = false
    local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
    if #last > 0 then
      local first, seq = string.match(last[1][1], '^(%d+)-(%d+)$')
      first, seq = tonumber(first), tonumber(seq)
      local n, sealed = nil, nil
      local lf = last[1][2]
      for i = 1, #lf, 2 do
        if lf[i] == 'n' then n = tonumber(lf[i + 1]) end
        if lf[i] == 'end' then sealed = tonumber(lf[i + 1]) end
      end
      if sealed then
        total = sealed
        already = true
      elseif n and n > 0 then
        total = first + n
      else
        -- A corrupt last entry (no valid count): seal just after it; readers report it.
        total = first
        seal_id = first .. '-' .. (seq + 1)
      end
    end
    if not already then
      redis.call('XADD', key, seal_id or (total .. '-1'), 'end', total)
    end
    lengths[kv['node']] = total
    table.insert(data_keys, key)
  end
end
local lengths_json = cjson.encode(lengths)
if next(lengths) == nil then lengths_json = '{}' end
redis.call('XADD', events, '*', 'event', 'END', 'state', state, 'error', err, 'time', now,
           'lengths', lengths_json)
redis.call('HSET', scan, 'state', state, 'error', err, 'end_time', now)
if ARGV[6] ~= '' then redis.call('HSET', scan, 'info', ARGV[6]) end
redis.call('DEL', lease)
if retention > 0 then
  local ms = math.floor(retention * 1000)
  redis.call('PEXPIRE', scan, ms)
  redis.call('PEXPIRE', events, ms)
  for _, key in ipairs(data_keys) do redis.call('PEXPIRE', key, ms) end
end
return {'ok', state}
"""

# The same script allowed to run when Redis is full (maxmemory reached, noeviction): ending a
# scan as FAILED adds only a few small entries, and refusing it would leave the scan running
# until its lease expires, when ending it as KILLED would be refused too. Script flags
# need Redis >= 7.0; on older servers the OOM error of the plain script stands.
_END_SCAN_LUA_ALLOW_OOM = "#!lua flags=allow-oom\n" + _END_SCAN_LUA


#: Entries of a stream as XRANGE and XREVRANGE return them here: ``(ID, fields)`` pairs.
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


def stream_entries(reply: object) -> StreamEntries:
    """An XRANGE or XREVRANGE reply, typed as what it is (no check, no copy).

    redis-py types these replies for every client: IDs and fields may be str (with
    ``decode_responses``), an entry may be ``(None, None)`` (XCLAIM of a deleted entry) and
    the reply None. Our client is created without ``decode_responses``, so everything is
    bytes, and XRANGE/XREVRANGE always reply with a list of complete entries.
    """
    return cast(StreamEntries, reply)


class DataStore:
    """A connection to the Redis database holding scans.

    Owns its connection pool: close it with :meth:`close` or use it as a context manager.

    Parameters
    ----------
    url : str, optional
        Redis URL. Default: ``SCANSTREAM_REDIS_URL``, else the user's embedded server,
        started on demand.
    settings : Settings, optional
        Prefix, lease and retention times. Default: :meth:`Settings.from_env`.

    Raises
    ------
    ProtocolVersionError
        The database holds scanstream data of another protocol version.
    redis.exceptions.ConnectionError
        Redis cannot be reached (not wrapped; configure retries with ``settings.retry``).
    """

    def __init__(self, url: str | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env(redis_url=url)
        if url is not None and self.settings.redis_url != url:
            self.settings = Settings.from_env(redis_url=url)
        from .server import resolve_url  # the server module starts the embedded server

        self.url = resolve_url(self.settings.redis_url)
        self.keys = Keys(self.settings.prefix)
        vectored = vectored_connection_class(self.url)
        connection_class = {"connection_class": vectored} if vectored else {}
        #: True when the connections write many buffers per system call: publishers then
        #: send batches without joining them (resp.Scattered); over TLS they join them.
        self.scatter_writes = vectored is not None
        self.redis: redis.Redis = redis.Redis.from_url(
            self.url,
            socket_connect_timeout=10,
            # Blocking reads are sliced to <= 1 s, so a 30 s timeout only fires on a dead server.
            socket_timeout=30,
            retry=self.settings.retry or default_retry(),
            health_check_interval=30,
            command_packer=_COMMAND_PACKER,
            **connection_class,
        )
        _refuse_reply_options(self.url, self.redis.connection_pool.connection_kwargs)
        self._end_scan_script = self.redis.register_script(_END_SCAN_LUA)
        self._end_scan_script_oom = self.redis.register_script(_END_SCAN_LUA_ALLOW_OOM)
        self._protocol_checked = False
        self._finalizer = weakref.finalize(self, self.redis.close)
        self.check_protocol()

    def __repr__(self) -> str:
        return f"<DataStore {self.url!r} prefix={self.keys.prefix!r}>"

    def __enter__(self) -> DataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._finalizer()

    def check_protocol(self, *, initialize: bool = False) -> None:
        """Check the protocol version key; with ``initialize``, set it when absent.

        Raises
        ------
        ProtocolVersionError
            The key holds another version.
        """
        if self._protocol_checked and not initialize:
            return
        # bytes, never str: the client is created without decode_responses.
        version = cast("bytes | None", self.redis.get(self.keys.protocol))
        if version is None and initialize:
            self.redis.set(self.keys.protocol, PROTOCOL_VERSION, nx=True)
            version = cast("bytes | None", self.redis.get(self.keys.protocol))
        if version is not None and version.decode() != PROTOCOL_VERSION:
            raise ProtocolVersionError(
                f"the database at {self.url} (prefix {self.keys.prefix!r}) holds scanstream "
                f"protocol version {version.decode()!r}, this scanstream speaks "
                f"{PROTOCOL_VERSION!r}; use a matching scanstream or another prefix/database"
            )
        self._protocol_checked = version is not None

    def sessions(self) -> list[str]:
        """Names of the sessions that have published at least one scan."""
        # bytes, never str: the client is created without decode_responses.
        names = cast("list[bytes]", self.redis.hkeys(self.keys.sessions))
        return sorted(k.decode() for k in names)

    def require_session(self, name: str) -> None:
        """Raise :class:`SessionNotFoundError` if ``name`` never published a scan."""
        check_session_name(name)
        if not self.redis.hexists(self.keys.sessions, name):
            known = ", ".join(self.sessions()) or "none"
            raise SessionNotFoundError(
                f"no session named {name!r} in {self.url} (prefix {self.keys.prefix!r}); "
                f"known sessions: {known}"
            )

    def end_scan(
        self,
        session: str,
        number: int,
        state: str,
        error: str,
        end_time: float,
        *,
        only_if_lease_expired: bool = False,
        info_json: str = "",
    ) -> tuple[str, str]:
        """Run the end-of-scan script. Returns ``(outcome, state)``.

        ``outcome`` is ``ok`` (ended now), ``ended`` (already ended; ``state`` is the final
        state), ``alive`` (lease still held) or ``missing`` (no such scan).
        """
        keys = [
            self.keys.scan(session, number),
            self.keys.scan_events(session, number),
            self.keys.scan_lease(session, number),
        ]
        args = [
            state,
            error,
            repr(end_time),
            repr(self.settings.retention_time),
            "1" if only_if_lease_expired else "0",
            info_json,
        ]
        try:
            outcome, final = self._end_scan_script(keys=keys, args=args)
        except redis.exceptions.OutOfMemoryError as exc:
            try:
                outcome, final = self._end_scan_script_oom(keys=keys, args=args)
            except redis.exceptions.ResponseError:
                raise exc from None
        return outcome.decode(), final.decode() if final else ""


_default_stores: dict[tuple[str | None, str | None], DataStore] = {}
_default_lock = threading.Lock()


def default_store(url: str | None = None, prefix: str | None = None) -> DataStore:
    """Return a process-wide shared :class:`DataStore` for ``url`` (created on first use)."""
    with _default_lock:
        store = _default_stores.get((url, prefix))
        if store is None:
            store = DataStore(settings=Settings.from_env(redis_url=url, prefix=prefix))
            _default_stores[(url, prefix)] = store
        return store
