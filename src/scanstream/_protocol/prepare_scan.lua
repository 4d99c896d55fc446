-- Marks a scan PREPARED: updates its hash, appends the NEW_NODE entries of the nodes created
-- before it that were not written yet, then the PREPARED entry, only if the scan hash still
-- exists. On a server that lost the scan (flushed, restarted empty) a plain HSET and XADD
-- would create keys without expiry that nothing would ever end.
--
-- The nodes' NEW_NODE entries come in this call rather than one XADD per node (one round trip
-- per scan instead of one per node: docs/decisions/0015-new-node-entries-at-prepared.md); they
-- precede PREPARED in the event stream, as if each had been written when its node was made.
--
-- KEYS: scan hash, events stream, lease (one hash tag: one slot; the lease is not used).
-- ARGV: count of hash arguments 2h, h field/value pairs; count k of NEW_NODE entries, then k
--       times: count of its arguments 2f, f field/value pairs; then the PREPARED entry's
--       field/value pairs. (k may be absent: no NEW_NODE entries.)
-- Returns 1 (written) or 0 (no scan hash: nothing written).
-- Called by scanstream/_protocol/scripts.py.

local scan, events, lease = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', scan) == 0 then return 0 end
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
redis.call('XADD', events, '*', unpack(ARGV, i))
return 1
