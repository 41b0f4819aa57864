-- Refresh a live worker record. ARGV: worker name, ttl (ms), timestamp, grace (s).
-- Returns 0 when the record had already expired: the worker must register again, because the
-- reaper may have settled its job in the meantime.
-- Redis notes when anyone last beat: a silence longer than the TTL means an outage (Redis paused,
-- restarted, or unreachable for everyone), so reaping is held off for ``grace`` seconds to let
-- every live worker register again first.
local key = worker_key(ARGV[1])
local t = tonumber(now())
local last = tonumber(redis.call('HGET', LIVENESS, 'last_beat') or t)
if t - last > tonumber(ARGV[2]) / 1000 then
  redis.call('HSET', LIVENESS, 'grace_until', string.format('%.6f', t + tonumber(ARGV[4])))
end
redis.call('HSET', LIVENESS, 'last_beat', string.format('%.6f', t))
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, 'last_heartbeat', ARGV[3])
redis.call('PEXPIRE', key, ARGV[2])
return 1
