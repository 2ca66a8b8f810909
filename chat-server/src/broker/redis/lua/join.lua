-- Presence and its JOIN event in one step.
-- ARGV: prefix, room, body, new_epoch, maxlen, ttl, server_id, session_id, member_json
local prefix, room, server, session = ARGV[1], ARGV[2], ARGV[7], ARGV[8]
local added = redis.call('HSET', prefix .. ':presence:' .. room, session, ARGV[9])
redis.call('SADD', prefix .. ':srv:' .. server, room .. '|' .. session)
if added == 1 then
  return append(prefix, room, ARGV[3], ARGV[4], ARGV[5], ARGV[6], '1')
end
return false
