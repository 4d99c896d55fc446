-- Records the info of one node of a running scan, only if the scan hash exists and the scan
-- has not ended: an update after END would change what readers already took as final, and
-- one on a server that lost the scan would create a hash without expiry.
--
-- KEYS: scan hash, events stream, lease (one hash tag: one slot; only the hash is used).
-- ARGV: the hash field of the node's info, its JSON value.
-- Returns 1 (written), 0 (no scan hash) or the final state the scan is in.
-- Called by scanstream/_protocol/scripts.py.

-- The wire format's rule, as scanstream/_protocol/entries.py states it: FINAL_STATE_NAMES
-- (tests/test_protocol_scripts.py checks they agree).
local FINAL_STATES = {DONE = true, USER_ABORTED = true, KILLED = true, FAILED = true}

local scan, events, lease = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', scan) == 0 then return 0 end
local state = redis.call('HGET', scan, 'state')
if state and FINAL_STATES[state] then return state end
redis.call('HSET', scan, ARGV[1], ARGV[2])
return 1
