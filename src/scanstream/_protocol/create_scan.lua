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
-- On a single server (never on a cluster: the session's stream is in another slot) the
-- session's stream may be given as KEYS[4]: the scan's NEW_SCAN entry is then appended in the
-- same step, after the scan's keys, so that a reader still finds the keys first, and the
-- publisher saves the round trip of its own XADD (docs/performance.md, "Eighth round").
--
-- KEYS: scan hash, events stream, lease (one hash tag: one slot); optionally the session's
--       stream (a single server only).
-- ARGV: lease (ms), count of hash arguments 2h, h field/value pairs, count of the CREATED
--       entry's arguments 2c, its c field/value pairs, then (with KEYS[4]) the NEW_SCAN
--       entry's field/value pairs.
-- Returns 1 (created, no NEW_SCAN entry written), the ID of the NEW_SCAN entry (created and
-- announced), or 0 (taken: nothing written). A NEW_SCAN entry the session's stream refuses (a
-- key of another type) is not written, and 1 returned: the caller writes it and reports why not.
-- Called by scanstream/_protocol/scripts.py.

local scan, events, lease = KEYS[1], KEYS[2], KEYS[3]
local nhash = tonumber(ARGV[2])
local fields = {}
for i = 3, 2 + nhash, 2 do fields[ARGV[i]] = ARGV[i + 1] end
if redis.call('EXISTS', scan) == 1 then
  local name, started = unpack(redis.call('HMGET', scan, 'name', 'start_time'))
  -- A replay: the NEW_SCAN entry, if any, was written by the first call.
  if name == fields['name'] and started == fields['start_time'] then return 1 end
  return 0
end
if redis.call('EXISTS', events) == 1 then return 0 end
local ncreated = tonumber(ARGV[3 + nhash])
local created_end = 3 + nhash + ncreated
redis.call('HSET', scan, unpack(ARGV, 3, 2 + nhash))
redis.call('XADD', events, '*', unpack(ARGV, 4 + nhash, created_end))
redis.call('SET', lease, '1', 'PX', ARGV[1])
if KEYS[4] and #ARGV > created_end then
  local id = redis.pcall('XADD', KEYS[4], '*', unpack(ARGV, created_end + 1, #ARGV))
  if type(id) == 'string' then return id end
end
return 1
