-- Deletes one scan if the deletion rules allow it: the check and the deletion in one step.
--
-- One script rather than WATCH/MULTI/EXEC: nothing can change between the check and the DEL
-- (a publisher renewing its lease, a node added), and Redis 7.0 refuses MULTI/EXEC past
-- maxmemory even for DEL, while it runs a script that only reads and deletes. No
-- '#!lua flags=...' line on purpose: a script without flags is refused past maxmemory only when
-- it calls a command that may use memory (DEL does not), and it runs on Redis 6.2 too.
--
-- KEYS: scan hash, events stream, lease.
-- ARGV: cutoff (epoch seconds; '' for any age), saved (0/1), force (0/1), dry_run (0/1).
-- Returns {outcome, a, b}, checked in this order:
--   {'missing', '', ''}                        no such scan
--   {'running', state, ''}                     not ended and its publisher's lease is alive
--   {'recent', 'ended'|'started', time}        ended (else started) after the cutoff
--   {'unsaved', state, ''}                     not saved by a writer and not forced
--   {'deleted'|'deletable', state, 'ended'|'gone'}  deleted (deletable in a dry run); 'gone':
--                                              not ended, the publisher's lease expired
-- Called by scanstream/_protocol/scripts.py.

-- The wire format's rules, as scanstream/_protocol/entries.py states them:
-- FINAL_STATE_NAMES and has_data_stream() (tests/test_protocol_scripts.py checks they agree).
local FINAL_STATES = {DONE = true, USER_ABORTED = true, KILLED = true, FAILED = true}
local DATA_NODE_TYPES = {channel = true, lima = true, node_ref_channel = true}

-- A node index as entries.parse_node_index() reads it: '0', or up to 16 decimal digits without
-- a leading zero (exact as a Lua number); else nil.
local function node_index(text)
  if type(text) ~= 'string' or #text > 16 then return nil end
  if text == '0' or string.match(text, '^[1-9]%d*$') then return text end
  return nil
end

local scan, events, lease = KEYS[1], KEYS[2], KEYS[3]
local cutoff, saved, force, dry_run = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', scan) == 0 then return {'missing', '', ''} end
local state = redis.call('HGET', scan, 'state') or '?'
local ended = FINAL_STATES[state] == true
if not ended and redis.call('EXISTS', lease) == 1 then return {'running', state, ''} end
if cutoff ~= '' then
  local when, what = redis.call('HGET', scan, 'end_time'), 'ended'
  if not (when and tonumber(when)) then
    when, what = redis.call('HGET', scan, 'start_time'), 'started'
  end
  if when and tonumber(when) and tonumber(when) > tonumber(cutoff) then
    return {'recent', what, when}
  end
end
if saved ~= '1' and force ~= '1' then return {'unsaved', state, ''} end
local how = 'gone'
if ended then how = 'ended' end
if dry_run == '1' then return {'deletable', state, how} end
local doomed = {scan, events, lease}
local seen = {}
-- pcall: an event stream of another type (garbage) names no data stream; it goes all the same.
local stored = redis.pcall('XRANGE', events, '-', '+')
if stored.err then stored = {} end
for _, entry in ipairs(stored) do
  local f = entry[2]
  local kv = {}
  for i = 1, #f, 2 do kv[f[i]] = f[i + 1] end
  -- A NEW_NODE replayed by a client retry appears twice: name its stream once. One whose node
  -- field is garbage names no stream: no key is built from it.
  local node = node_index(kv['node'])
  if kv['event'] == 'NEW_NODE' and DATA_NODE_TYPES[kv['type']] and node and not seen[node] then
    seen[node] = true
    table.insert(doomed, scan .. ':data:' .. node)
  end
end
-- In slices: unpack() of thousands of values would exceed Lua's C stack.
for i = 1, #doomed, 500 do
  redis.call('DEL', unpack(doomed, i, math.min(i + 499, #doomed)))
end
return {'deleted', state, how}
