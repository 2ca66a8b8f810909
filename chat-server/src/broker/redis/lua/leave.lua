-- Presence removal and its LEAVE event in one step; nothing when the session was not there.
-- ARGV: prefix, room, body, new_epoch, maxlen, ttl, server_id, session_id
local prefix, room, server, session = ARGV[1], ARGV[2], ARGV[7], ARGV[8]
redis.call('SREM', prefix .. ':srv:' .. server, room .. '|' .. session)
if redis.call('HDEL', prefix .. ':presence:' .. room, session) == 1 then
  return append(prefix, room, ARGV[3], ARGV[4], ARGV[5], ARGV[6], '1')
end
return false
