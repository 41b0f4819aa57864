-- Refresh a live worker record. ARGV: worker name, ttl (ms), timestamp.
-- Returns 0 when the record had already expired: the worker must register again, because the
-- reaper may have settled its job in the meantime.
local key = worker_key(ARGV[1])
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, 'last_heartbeat', ARGV[3])
redis.call('PEXPIRE', key, ARGV[2])
return 1
