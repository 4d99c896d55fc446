-- Ends a scan atomically: seals every data stream with its final length, appends END to the
-- scan's event stream, records the state, drops the lease and applies the retention time.
--
-- Run server-side so that a reader declaring a scan KILLED (lease expired) and a late
-- publisher calling end() cannot both succeed, and so that END is never visible before the
-- seals. The data stream keys are derived from the NEW_NODE entries; they share the scan's
-- hash tag, hence its cluster slot.
--
-- On a single server (never on a cluster: another slot) the session's stream may be given as
-- KEYS[4] and the ID of the scan's NEW_SCAN entry as ARGV[8]: a scan whose entry is gone is
-- then not ended ('unannounced', nothing written), so that its publisher announces it again
-- before END (publish/session.py, ensure_announced) and calls again without the check; the
-- check costs no round trip of its own.
--
-- KEYS: scan hash, events stream, lease; optionally the session's stream (a single server).
-- ARGV: state, error, time, retention (s), only_if_lease_expired (0/1), info JSON or "",
--       acknowledged JSON or "" (data node index -> points the publisher had acknowledged),
--       and with KEYS[4] the ID of the scan's NEW_SCAN entry.
-- Returns {outcome, state, detail, skipped}: outcome 'ok' (ended now), 'ended' (already ended
-- in state), 'alive' (lease still held), 'missing' (no such scan), 'unannounced' (KEYS[4]
-- given and the NEW_SCAN entry is not there, or the stream cannot be read: nothing
-- written), 'corrupt' (its hash or its event stream holds another type, or the event stream
-- is gone; detail says so; nothing written) or 'lost' (ended FAILED now: a stream
-- holds fewer points than were acknowledged, which detail names); skipped lists what
-- could not be sealed, one text each: a NEW_NODE entry whose node index is garbage (its data
-- key cannot be named), a data key that is not a stream. The others are sealed all the same,
-- and the END entry names only valid node indices, so that readers can parse it.
--
-- 'lost' is what a failover looks like when the master acknowledged points its replica never
-- received (replication is asynchronous): without this check, END would seal the shorter
-- streams and a reader would see a complete scan with its last points missing.
-- Called by scanstream/_protocol/scripts.py, which may prepend '#!lua flags=allow-oom'.

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

-- A point count or index: decimal digits only (as entries.parse_data_entry() reads them).
local function count(text)
  if type(text) ~= 'string' or #text > 15 or not string.match(text, '^%d+$') then return nil end
  return tonumber(text)
end

-- The 'n' (points) and 'end' (seal) counts of an entry's fields, each nil when not valid.
local function entry_counts(fields)
  local n, sealed = nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then n = count(fields[i + 1]) end
    if fields[i] == 'end' then sealed = count(fields[i + 1]) end
  end
  return n, sealed
end

-- The index after the points of a data entry (ID <index>-1, a valid 'n'); nil for another.
local function data_end(entry)
  local first, seq = string.match(entry[1], '^(%d+)-(%d+)$')
  local n = entry_counts(entry[2])
  if seq ~= '1' or count(first) == nil or n == nil then return nil end
  return count(first) + n
end

-- The end of the newest data entry of `recent` (XREVRANGE entries, newest first) that
-- follows the data entry before it, or is the oldest there; 0 when there is none.
local function chained_end(recent)
  if type(recent) ~= 'table' or recent.err then return 0 end
  local ends, firsts = {}, {}
  for _, e in ipairs(recent) do
    local stop = data_end(e)
    if stop then
      table.insert(ends, stop)
      table.insert(firsts, count(string.match(e[1], '^(%d+)-')))
    end
  end
  for i = 1, #ends do
    if ends[i + 1] == nil or ends[i + 1] == firsts[i] then return ends[i] end
  end
  return 0
end

local scan, events, lease = KEYS[1], KEYS[2], KEYS[3]
local state, err, now, retention = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local acknowledged = {}
if ARGV[7] and ARGV[7] ~= '' then acknowledged = cjson.decode(ARGV[7]) end
if redis.call('EXISTS', scan) == 0 then return {'missing', '', ''} end
if KEYS[4] then
  -- pcall: a session stream of another type (garbage) is the caller's to report.
  local there = redis.pcall('XRANGE', KEYS[4], ARGV[8], ARGV[8])
  if type(there) ~= 'table' or there.err or #there == 0 then
    return {'unannounced', '', ''}
  end
end
local current = redis.pcall('HGET', scan, 'state')
if type(current) == 'table' and current.err then
  return {'corrupt', '', 'its hash ' .. scan .. ' is not a hash (' .. current.err
    .. '): nothing was changed', {}}
end
if current and FINAL_STATES[current] then return {'ended', current, ''} end
-- A lease is the string '1' with an expiry (entries.lease_status): garbage over the key
-- (another type or value, no expiry) counts as expired, or a dead publisher's scan would run
-- for ever. GET by pcall: another type is an error reply, not a script error.
local function lease_held()
  local ttl = redis.call('PTTL', lease)
  return ttl >= 0 and redis.pcall('GET', lease) == '1'
end
if ARGV[5] == '1' and lease_held() then
  return {'alive', current or '', ''}
end
local lengths = {}
local data_keys = {}
local skipped = {}
local seen = {}  -- node indices handled
-- create_scan.lua writes the stream's first entry and nothing expires it before END: a
-- stream that is gone was deleted outside scanstream, with the NEW_NODE entries that name the
-- data streams. END would create it again holding no node, and readers would see a complete
-- scan without data: refuse, as for garbage over it.
if redis.call('EXISTS', events) == 0 then
  return {'corrupt', current or '', 'its event stream ' .. events .. ' is gone (deleted '
    .. 'outside scanstream, with the entries naming its data): nothing was changed', {}}
end
-- pcall: garbage over the event stream (another type) must be named, not a script error.
local stored = redis.pcall('XRANGE', events, '-', '+')
if stored.err then
  return {'corrupt', current or '', 'its event stream ' .. events .. ' is not a stream ('
    .. stored.err .. '): nothing was changed', {}}
end
for _, entry in ipairs(stored) do
  local f = entry[2]
  local kv = {}
  for i = 1, #f, 2 do kv[f[i]] = f[i + 1] end
  local node = node_index(kv['node'])
  if kv['event'] == 'NEW_NODE' and DATA_NODE_TYPES[kv['type']] and node == nil then
    -- Garbage written into the stream: a key built from it would name no stream of the scan,
    -- and an END naming it could not be parsed. Skipped; readers report the entry too.
    local shown = "missing"
    if kv['node'] then
      shown = "'" .. string.gsub(string.sub(kv['node'], 1, 40), '[^%w%p ]', '?') .. "'"
    end
    table.insert(skipped, 'NEW_NODE entry ' .. entry[1] .. ': node field ' .. shown
      .. ' is not a node index')
  -- A NEW_NODE replayed by a client retry appears twice: seal each stream once.
  elseif kv['event'] == 'NEW_NODE' and DATA_NODE_TYPES[kv['type']] and not seen[node] then
    seen[node] = true
    local key = scan .. ':data:' .. node
    local total = 0
    local seal_id = nil
    local already = false
    -- The length of a stream comes from its last entry, as entries.stream_length() reads it:
    -- a seal's 'end' field, else the ID's first part (the first point's index) plus 'n'.
    -- Unless that entry is not the publisher's (below). The entry before it tells: the
    -- publisher's entries follow each other, each starting where the one before ends.
    -- pcall: a key of another type (garbage) must not stop the sealing of the others.
    local last = redis.pcall('XREVRANGE', key, '+', '-', 'COUNT', 2)
    local problem = last.err
    if not problem and #last > 0 then
      local first, seq = string.match(last[1][1], '^(%d+)-(%d+)$')
      first, seq = count(first), count(seq)
      local n, sealed = entry_counts(last[1][2])
      if first == nil or seq == nil then
        problem = 'its last entry ' .. last[1][1] .. ' has an ID out of range'
      elseif sealed then
        total = sealed
        already = true
      elseif seq == 1 and n and n > 0 and (#last < 2 or data_end(last[2]) == first) then
        total = first + n
      elseif seq == 1 and not (n and n > 0) then
        -- A corrupt last entry (no valid count): seal just after it; readers report it.
        total = first
        seal_id = first .. '-' .. (seq + 1)
      else
        -- An entry another process added (XADD *: an ID far ahead, not <index>-1, or one that
        -- does not follow the entry before it): its count is no length. The length is that
        -- of the publisher's last entry (among the last few); the seal goes after the
        -- foreign one. Readers name the entry.
        seal_id = first .. '-' .. (seq + 1)
        total = chained_end(redis.pcall('XREVRANGE', key, '+', '-', 'COUNT', 64))
      end
    end
    if not problem and not already then
      local added = redis.pcall('XADD', key, seal_id or (total .. '-1'), 'end', total)
      problem = type(added) == 'table' and added.err or nil
    end
    if problem then
      table.insert(skipped, 'node ' .. node .. ' (NEW_NODE entry ' .. entry[1] .. '): data key '
        .. key .. ' not sealed: ' .. problem)
    else
      lengths[node] = total
      table.insert(data_keys, key)
    end
  end
end
local losses = {}
local lost = {}  -- data node index -> points acknowledged (more than its stream holds)
for node, want in pairs(acknowledged) do
  local have = lengths[node] or 0
  if have < want then
    table.insert(losses, 'node ' .. node .. ': ' .. have .. ' of ' .. want .. ' points')
    lost[node] = want
  end
end
local outcome = 'ok'
local detail = ''
if #losses > 0 then
  table.sort(losses)
  outcome, state = 'lost', 'FAILED'
  detail = 'points acknowledged by Redis are gone from it (a failover or a restart lost '
    .. 'writes): ' .. table.concat(losses, ', ')
  if err ~= '' then err = err .. '; ' .. detail else err = detail end
end
local lengths_json = cjson.encode(lengths)
if next(lengths) == nil then lengths_json = '{}' end
if #losses > 0 then
  redis.call('XADD', events, '*', 'event', 'END', 'state', state, 'error', err, 'time', now,
             'lengths', lengths_json, 'lost', cjson.encode(lost))
else
  redis.call('XADD', events, '*', 'event', 'END', 'state', state, 'error', err, 'time', now,
             'lengths', lengths_json)
end
redis.call('HSET', scan, 'state', state, 'error', err, 'end_time', now)
if ARGV[6] ~= '' then redis.call('HSET', scan, 'info', ARGV[6]) end
redis.call('DEL', lease)
if retention > 0 then
  local ms = math.floor(retention * 1000)
  redis.call('PEXPIRE', scan, ms)
  redis.call('PEXPIRE', events, ms)
  for _, key in ipairs(data_keys) do redis.call('PEXPIRE', key, ms) end
end
return {outcome, state, detail, skipped}
