-- Remove the records of ended jobs past retention (chosen by conductor/retention.py). KEYS[1]: the
-- expired-through watermark. ARGV: job ids. Returns the ids removed (only jobs in a final state).
-- A task of a job array counts itself out of its array ('expired'); the array's own keys (hash,
-- template, tasks, skipped indices, dependents) go in the same step as the last of its records,
-- once every task has ended: never earlier, since the array's first task is its record and can
-- expire while later tasks are still to be materialised from those keys, and its dependents
-- (keyed by the array's id, which is the first task's) still wait for the rest.
local removed, arrays = {}, {}
for _, id in ipairs(ARGV) do
  local j = redis.call('HMGET', job_key(id), 'state', 'array_job_id')
  local state, array_id = j[1], j[2]
  if state and state ~= 'PENDING' and state ~= 'RUNNING' then
    redis.call('DEL', job_key(id), control_key(id))
    redis.call('ZREM', JOBS, id)
    redis.call('ZREM', state_key(state), id)
    if array_id and array_id ~= '' and redis.call('EXISTS', array_key(array_id)) == 1 then
      redis.call('HINCRBY', array_key(array_id), 'expired', 1)
      arrays[array_id] = true
    else
      redis.call('DEL', dependents_key(id))  -- released at the end already; nothing may wait any more
    end
    table.insert(removed, id)
  end
end
for array_id in pairs(arrays) do
  local key = array_key(array_id)
  local a = redis.call('HMGET', key, 'expired', 'materialized')
  if array_done(key) and tonumber(a[1] or 0) >= tonumber(a[2] or 0) then
    redis.call('DEL', key, key .. ARRAY_TEMPLATE_SUFFIX, key .. ARRAY_TASKS_SUFFIX, key .. ARRAY_SKIP_SUFFIX,
                dependents_key(array_id))
  end
end
if #removed > 0 then
  local highest = 0
  for _, id in ipairs(removed) do highest = math.max(highest, tonumber(id)) end
  redis.call('ZADD', KEYS[1], 'GT', highest, 'id')
end
return removed
