-- Renews this server in the registry. Returns {1, now} if it was registered, {0, now} if it was
-- not (first start, or reaped meanwhile); now is Redis's clock in ms (for publish deadlines).
-- ARGV: prefix, server_id, ttl_ms
local servers = ARGV[1] .. ':servers'
local existed = redis.call('ZSCORE', servers, ARGV[2])
local now = now_ms()
redis.call('ZADD', servers, now + tonumber(ARGV[3]), ARGV[2])
if existed then return {1, now} end
return {0, now}
