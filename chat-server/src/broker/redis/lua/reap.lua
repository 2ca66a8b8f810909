-- Removes every server whose heartbeat expired, with all its sessions' presence, publishing one
-- LEAVE per session. Atomic, so reapers racing on several instances reap each session once.
-- ARGV: prefix, reaper_server_id, maxlen, ttl, sent_at, new_epoch, max_sessions
-- Returns {server, sessions_reaped, ...}.
local prefix = ARGV[1]
local servers = prefix .. ':servers'
local dead = redis.call('ZRANGEBYSCORE', servers, '-inf', now_ms())
local out = {}
local budget = tonumber(ARGV[7])
for _, server in ipairs(dead) do
  local srv = prefix .. ':srv:' .. server
  local entries = redis.call('SRANDMEMBER', srv, budget)
  local reaped = 0
  for _, entry in ipairs(entries) do
    local sep = string.find(entry, '|', 1, true)
    local room, session = string.sub(entry, 1, sep - 1), string.sub(entry, sep + 1)
    local presence = prefix .. ':presence:' .. room
    local member = redis.call('HGET', presence, session)
    redis.call('SREM', srv, entry)
    if member then
      redis.call('HDEL', presence, session)
      local m = cjson.decode(member)
      local body = cjson.encode({
        roomId = room, id = server .. ':' .. session .. ':leave', type = 'LEAVE',
        sender = { id = m.userId, name = m.name }, content = '', sentAt = ARGV[5],
        serverId = ARGV[2], headers = { { 'x-session', session }, { 'x-reaped-server', server } },
      })
      append(prefix, room, body, ARGV[6], ARGV[3], ARGV[4], '1')
      reaped = reaped + 1
    end
  end
  budget = budget - #entries
  -- Forget the server only once all its sessions are gone; a big one takes several rounds.
  if redis.call('SCARD', srv) == 0 then
    redis.call('ZREM', servers, server)
    redis.call('DEL', srv)
  end
  out[#out + 1] = server
  out[#out + 1] = reaped
  if budget <= 0 then break end
end
return out
