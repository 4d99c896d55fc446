-- Creates a scan's keys (hash, CREATED entry, lease) unless its number is taken.
--
-- A number is taken when the scan hash or its event stream exists: the session counter went
-- back (a failover to a replica that had not received the latest INCR, a restore), and the
-- scan of that number still lives in another slot. Without this check the new scan's fields
-- and entries would be written into the old scan's keys.
--
-- A replay of this very call (redis-py retries a command whose reply was lost) finds the hash
-- with the same name and start time: it is reported as created, not as taken.
--
-- KEYS: scan hash, events stream, lease (one hash tag: one slot).
-- ARGV: lease (ms), count of hash arguments 2h, h field/value pairs, then the CREATED entry's
--       field/value pairs.
-- Returns 1 (created) or 0 (taken: nothing written).
-- Called by scanstream/_protocol/scripts.py.

local scan, events, lease = KEYS[1], KEYS[2], KEYS[3]
local nhash = tonumber(ARGV[2])
local fields = {}
for i = 3, 2 + nhash, 2 do fields[ARGV[i]] = ARGV[i + 1] end
if redis.call('EXISTS', scan) == 1 then
  local name, started = unpack(redis.call('HMGET', scan, 'name', 'start_time'))
  if name == fields['name'] and started == fields['start_time'] then return 1 end
  return 0
end
if redis.call('EXISTS', events) == 1 then return 0 end
redis.call('HSET', scan, unpack(ARGV, 3, 2 + nhash))
redis.call('XADD', events, '*', unpack(ARGV, 3 + nhash, #ARGV))
redis.call('SET', lease, '1', 'PX', ARGV[1])
return 1
