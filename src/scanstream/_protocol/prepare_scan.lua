-- Marks a scan PREPARED: updates its hash and appends the PREPARED entry, only if the scan
-- hash still exists. On a server that lost the scan (flushed, restarted empty) a plain HSET
-- and XADD would create keys without expiry that nothing would ever end.
--
-- KEYS: scan hash, events stream, lease (one hash tag: one slot; the lease is not used).
-- ARGV: count of hash arguments 2h, h field/value pairs, then the entry's field/value pairs.
-- Returns 1 (written) or 0 (no scan hash: nothing written).
-- Called by scanstream/_protocol/scripts.py.

local scan, events, lease = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', scan) == 0 then return 0 end
local n = tonumber(ARGV[1])
redis.call('HSET', scan, unpack(ARGV, 2, n + 1))
redis.call('XADD', events, '*', unpack(ARGV, n + 2))
return 1
