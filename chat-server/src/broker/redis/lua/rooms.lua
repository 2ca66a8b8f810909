-- Every room still alive: {id, epoch, last, first, ...}; forgets rooms whose data expired.
-- ARGV: prefix, max_rooms
local prefix = ARGV[1]
local ids = redis.call('ZREVRANGE', prefix .. ':rooms', 0, tonumber(ARGV[2]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local m = redis.call('HMGET', prefix .. ':room:' .. id, 'epoch', 'last')
  if m[1] then
    local last = tonumber(m[2])
    out[#out + 1] = id
    out[#out + 1] = m[1]
    out[#out + 1] = last
    out[#out + 1] = first_offset(prefix .. ':log:' .. id, last)
  else
    redis.call('ZREM', prefix .. ':rooms', id)
  end
end
return out
