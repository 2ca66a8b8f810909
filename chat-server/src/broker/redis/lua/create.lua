-- Creates an empty room; 1 if created, 0 if it existed. ARGV: prefix, room, new_epoch, ttl
local meta = ARGV[1] .. ':room:' .. ARGV[2]
if redis.call('HSETNX', meta, 'epoch', ARGV[3]) == 0 then return 0 end
redis.call('HSET', meta, 'last', 0)
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', meta, ARGV[4]) end
local t = redis.call('TIME')
redis.call('ZADD', ARGV[1] .. ':rooms', t[1], ARGV[2])
return 1
