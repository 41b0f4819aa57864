-- Re-evaluate the jobs whose after:ID+time delay is due (time passing is no event that would
-- notify them). Run by the cluster's maintenance pass. Returns how many were looked at.
local due = redis.call('ZRANGEBYSCORE', DEPENDENCY_TIMERS, '-inf', now(), 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  redis.call('ZREM', DEPENDENCY_TIMERS, id)
  update_dependency(id)  -- placeable now, or a timer again if another delay is still running
end
return #due
