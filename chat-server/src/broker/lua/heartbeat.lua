-- Renews this server in the registry. Returns 1 if it was registered, 0 if it was not (first
-- start, or reaped meanwhile). ARGV: prefix, server_id, ttl_ms
local servers = ARGV[1] .. ':servers'
local existed = redis.call('ZSCORE', servers, ARGV[2])
redis.call('ZADD', servers, now_ms() + tonumber(ARGV[3]), ARGV[2])
if existed then return 1 end
return 0
