-- Shared by every script that appends a room event. Keys are derived from the prefix here;
-- that is fine on one Redis node or behind Sentinel (no Redis Cluster slots to respect).
--
-- append(prefix, room, body, new_epoch, maxlen, ttl, publish, id) assigns the room's next offset
-- (a new epoch if the room has none), appends to its Stream with ID "<offset>-0", refreshes
-- the TTLs, records the room, and PUBLISHes the record unless told not to. `body` is the
-- event's JSON object without offset and epoch; the record is that object with both added.
-- With `id`, appending a message whose id is among the room's 16 newest appends nothing.
local RECENT = 16

local function append(prefix, room, body, new_epoch, maxlen, ttl, publish, id)
  local meta = prefix .. ':room:' .. room
  local log = prefix .. ':log:' .. room
  -- The ids of the room's newest appends, newest first, one per append ('' for an event
  -- without one): the entry at position p is offset last - p.
  local ids = prefix .. ':ids:' .. room
  local epoch = redis.call('HGET', meta, 'epoch')
  -- A client library retries a command whose reply was lost (say, in a failover): the same
  -- message id among the newest means it is already in; hand back that record. The record
  -- itself is checked, so a list out of step with the Stream only costs the dedupe.
  if id and id ~= '' and epoch then
    local p = redis.call('LPOS', ids, id)
    if p then
      local at = tonumber(redis.call('HGET', meta, 'last')) - p
      if at > 0 then
        local e = redis.call('XRANGE', log, at .. '-0', at .. '-0')[1]
        if e and string.find(e[2][2], '"id":"' .. id .. '"', 1, true) then return e[2][2] end
      end
    end
  end
  if not epoch then
    epoch = new_epoch
    redis.call('DEL', log, ids)
    redis.call('HSET', meta, 'epoch', epoch, 'last', 0)
  end
  local offset = redis.call('HINCRBY', meta, 'last', 1)
  local record = '{"offset":' .. offset .. ',"epoch":"' .. epoch .. '",' .. string.sub(body, 2)
  redis.call('XADD', log, 'MAXLEN', maxlen, offset .. '-0', 'r', record)
  redis.call('LPUSH', ids, id or '')
  redis.call('LTRIM', ids, 0, RECENT - 1)
  if tonumber(ttl) > 0 then
    redis.call('EXPIRE', meta, ttl)
    redis.call('EXPIRE', log, ttl)
    redis.call('EXPIRE', ids, ttl)
  end
  local t = redis.call('TIME')
  redis.call('ZADD', prefix .. ':rooms', t[1], room)
  if publish == '1' then
    redis.call('PUBLISH', prefix .. ':ch:room:' .. room, record)
  end
  return record
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
