-- Cancel a job array, or one task of it. ARGV: array job id, task index ('' = the whole array).
-- Returns {'tasks', id, ...}: the materialised tasks the caller now cancels one by one (the
-- cancel script), or {'missing'}, or {'skipped'} when the task had not been materialised yet
-- (it never will be), or {'final'} when it was already cancelled (the whole array: when every
-- task of it has ended).
-- The part not yet materialised is cancelled here, atomically: no task of it will ever start.
local key = array_key(ARGV[1])
if redis.call('EXISTS', key) == 0 then return {'missing'} end
local index = ARGV[2]
if index ~= '' then
  local task = redis.call('HGET', key, 'task:' .. index)
  if task then return {'tasks', task} end
  if redis.call('SISMEMBER', key .. ARRAY_SKIP_SUFFIX, index) == 1 or redis.call('HGET', key, 'cancelled') == '1' then
    return {'final'}
  end
  redis.call('SADD', key .. ARRAY_SKIP_SUFFIX, index)
  for _, field in ipairs({'ended', 'bad', 'begun'}) do redis.call('HINCRBY', key, field, 1) end
  notify_dependents(ARGV[1], array_done(key))
  return {'skipped'}
end
if array_done(key) then return {'final'} end  -- every task has ended: nothing left to cancel
cancel_array_rest(ARGV[1])
local reply = redis.call('ZRANGE', key .. ARRAY_TASKS_SUFFIX, 0, -1)
table.insert(reply, 1, 'tasks')
return reply
