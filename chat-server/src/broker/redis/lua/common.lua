-- Set ahead of every script. append() serves those that append a room event, first_offset()
-- those that report a room's position. Keys are derived from the prefix here;
-- that is fine on one Redis node or behind Sentinel (no Redis Cluster slots to respect).
--
-- append(prefix, room, body, new_epoch, maxlen, ttl, publish, id, deadline) assigns the room's next offset
-- (a new epoch if the room has none), appends to its Stream with ID "<offset>-0", refreshes
-- the TTLs, records the room, and PUBLISHes the record unless told not to. `body` is the
-- event's JSON object without offset and epoch; the record is that object with both added.
-- With `id`, a message whose id the room stored in the last WINDOW seconds appends nothing.
--
-- A client library resends a command whose reply was lost (a dropped connection, a failover,
-- an instance paused and resumed); by then any number of other appends may be in. So the
-- check goes by time, not by count: the ids of a room's messages go into a hash per
-- WINDOW-second bucket of Redis time (id -> offset), and the current and the previous bucket
-- are looked in, so a resend up to WINDOW seconds after its first run is always caught. A
-- resend is held back by the command timeout (CHAT_REDIS_WAIT_MS, 10 s by default) unless
-- the instance itself was paused. Each bucket lives 2 * WINDOW seconds. A message that is not
-- among them and comes past `deadline` (ms of Redis time: WINDOW seconds after the instance
-- took it) is refused, as it might be a resend whose first run has left the window: a pause
-- longer than WINDOW costs that message its receipt, never a second copy. WINDOW (seconds) is
-- set ahead of this file by the server, from RESEND_WINDOW in config.rs.
--
-- ARCHIVE (set ahead of this file too, from CHAT_ARCHIVE_BACKLOG; 0 when archiving is off):
-- every appended record also goes to the archive Stream `prefix:archive`, which the
-- instances' archivers read through the consumer group `archivers` and XDEL once the record is
-- in PostgreSQL, so the Stream holds only records not yet archived. At ARCHIVE of those the
-- oldest is trimmed to make room and counted in `prefix:archive:lost`: the one way an
-- appended record can miss the archive (see docs/ARCHITECTURE.md, "Archive").

local function append(prefix, room, body, new_epoch, maxlen, ttl, publish, id, deadline)
  local meta = prefix .. ':room:' .. room
  local log = prefix .. ':log:' .. room
  local t = redis.call('TIME')
  local bucket = math.floor(tonumber(t[1]) / WINDOW)
  local ids = prefix .. ':ids:' .. room .. ':' .. bucket
  local before = prefix .. ':ids:' .. room .. ':' .. (bucket - 1)
  local epoch = redis.call('HGET', meta, 'epoch')
  local keyed = id and id ~= ''
  if keyed and epoch then
    local at = redis.call('HGET', ids, id) or redis.call('HGET', before, id)
    if at then
      -- Already in: the resend carries the same body, so this is the record stored then.
      return '{"offset":' .. at .. ',"epoch":"' .. epoch .. '",' .. string.sub(body, 2)
    end
  end
  if deadline and deadline ~= '' then
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    if now > tonumber(deadline) then
      return redis.error_reply('STALE the message reached Redis over ' .. WINDOW
        .. ' s after it was sent (a paused instance?); not stored, it may be in already')
    end
  end
  if not epoch then
    epoch = new_epoch
    -- Offsets start again: ids recorded under an earlier epoch name nothing now.
    redis.call('DEL', log, ids, before)
    redis.call('HSET', meta, 'epoch', epoch, 'last', 0)
  end
  local offset = redis.call('HINCRBY', meta, 'last', 1)
  local record = '{"offset":' .. offset .. ',"epoch":"' .. epoch .. '",' .. string.sub(body, 2)
  redis.call('XADD', log, 'MAXLEN', maxlen, offset .. '-0', 'r', record)
  if keyed then
    redis.call('HSET', ids, id, offset)
    redis.call('EXPIRE', ids, 2 * WINDOW)
  end
  if tonumber(ttl) > 0 then
    redis.call('EXPIRE', meta, ttl)
    redis.call('EXPIRE', log, ttl)
  end
  if ARCHIVE > 0 then
    local stream = prefix .. ':archive'
    if redis.call('XLEN', stream) >= ARCHIVE then
      local trimmed = redis.call('XTRIM', stream, 'MAXLEN', ARCHIVE - 1)
      redis.call('INCRBY', prefix .. ':archive:lost', trimmed)
    end
    redis.call('XADD', stream, '*', 'r', record)
  end
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

-- The offset of the oldest event the room's Stream `log` still holds; last + 1 when it holds
-- none. Stream IDs are "<offset>-0", so the head's ID carries it.
local function first_offset(log, last)
  local head = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
  if #head > 0 then return tonumber(string.match(head[1][1], '^(%d+)')) end
  return last + 1
end
