-- Marks a scan PREPARED: updates its hash, appends the NEW_NODE entries of the nodes created
-- before it that were not written yet, then the PREPARED entry, only if the scan hash still
-- exists. On a server that lost the scan (flushed, restarted empty) a plain HSET and XADD
-- would create keys without expiry that nothing would ever end.
--
-- The nodes' NEW_NODE entries come in this call rather than one XADD per node (one round trip
-- per scan instead of one per node: docs/decisions/0015-new-node-entries-at-prepared.md); they
-- precede PREPARED in the event stream, as if each had been written when its node was made.
--
-- On a single server (never on a cluster: another slot) the session's stream may be given as
-- KEYS[4] and the ID of the scan's NEW_SCAN entry as the last argument: the script then also
-- says whether that entry is still there, the check the publisher makes at prepared()
-- (publish/session.py, ensure_announced), without a round trip of its own.
--
-- KEYS: scan hash, events stream, lease (one hash tag: one slot; the lease is not used);
--       optionally the session's stream (a single server only).
-- ARGV: count of hash arguments 2h, h field/value pairs; count k of NEW_NODE entries, then k
--       times: count of its arguments 2f, f field/value pairs; then the PREPARED entry's
--       field/value pairs; then (with KEYS[4]) the ID of the NEW_SCAN entry.
-- Returns 1 (written), 2 (written, and the NEW_SCAN entry is there) or 0 (no scan hash:
-- nothing written).
-- Called by scanstream/_protocol/scripts.py.

local scan, events, lease = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', scan) == 0 then return 0 end
local last = #ARGV
if KEYS[4] then last = last - 1 end
local n = tonumber(ARGV[1])
redis.call('HSET', scan, unpack(ARGV, 2, n + 1))
local i = n + 2
local nodes = tonumber(ARGV[i]) or 0
i = i + 1
for _ = 1, nodes do
  local f = tonumber(ARGV[i])
  redis.call('XADD', events, '*', unpack(ARGV, i + 1, i + f))
  i = i + 1 + f
end
redis.call('XADD', events, '*', unpack(ARGV, i, last))
if KEYS[4] then
  -- pcall: a session stream of another type (garbage) is the caller's to report.
  local there = redis.pcall('XRANGE', KEYS[4], ARGV[#ARGV], ARGV[#ARGV])
  if type(there) == 'table' and not there.err and #there > 0 then return 2 end
end
return 1
