-- A room's position and a slice of its history in one step.
-- KEYS: meta, log. ARGV: mode ('after' | 'last' | 'info'), start_id (for 'after'), count.
-- Returns {epoch, last, first, record...}; {false} when the room does not exist.
local m = redis.call('HMGET', KEYS[1], 'epoch', 'last')
if not m[1] then return { false } end
local last = tonumber(m[2])
local out = { m[1], last, first_offset(KEYS[2], last) }
local entries = {}
if ARGV[1] == 'after' then
  entries = redis.call('XRANGE', KEYS[2], ARGV[2], '+', 'COUNT', ARGV[3])
elseif ARGV[1] == 'last' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
end
for _, e in ipairs(entries) do out[#out + 1] = e[2][2] end
return out
