-- ARGV: prefix, room, body, new_epoch, maxlen, ttl, publish ('1' or '0'), message id,
-- deadline (ms of Redis time, or '')
return append(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
