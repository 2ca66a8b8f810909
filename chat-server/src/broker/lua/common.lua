-- Shared by every script that appends a room event. Keys are derived from the prefix here;
-- that is fine on one Redis node or behind Sentinel (no Redis Cluster slots to respect).
--
-- append(prefix, room, body, new_epoch, maxlen, ttl, publish, id) assigns the room's next offset
-- (a new epoch if the room has none), appends to its Stream with ID "<offset>-0", refreshes
-- the TTLs, records the room, and PUBLISHes the record unless told not to. `body` is the
-- event's JSON object without offset and epoch; the record is that object with both added.
-- With `id`, appending a message whose id is among the newest entries appends nothing.
local function append(prefix, room, body, new_epoch, maxlen, ttl, publish, id)
  local meta = prefix .. ':room:' .. room
  local log = prefix .. ':log:' .. room
  -- A client library retries a command whose reply was lost (say, in a failover): the same
  -- message id among the newest entries means it is already in; hand back that record.
  if id then
    local needle = '"id":"' .. id .. '"'
    for _, e in ipairs(redis.call('XREVRANGE', log, '+', '-', 'COUNT', 16)) do
      if string.find(e[2][2], needle, 1, true) then return e[2][2] end
    end
  end
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = new_epoch
    redis.call('DEL', log)
    redis.call('HSET', meta, 'epoch', epoch, 'last', 0)
  end
  local offset = redis.call('HINCRBY', meta, 'last', 1)
  local record = '{"offset":' .. offset .. ',"epoch":"' .. epoch .. '",' .. string.sub(body, 2)
  redis.call('XADD', log, 'MAXLEN', maxlen, offset .. '-0', 'r', record)
  if tonumber(ttl) > 0 then
    redis.call('EXPIRE', meta, ttl)
    redis.call('EXPIRE', log, ttl)
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
