-- A worker re-asserts the job it is running after Redis lost writes (failover to a lagging
-- replica, restart from an older AOF/RDB). ARGV: id, worker, node, then the job's fields as the
-- worker received them when it claimed the job (field, value, ...).
-- Returns {'ok'} when Redis already agrees, {'restored', previous state} when the job was made
-- RUNNING on this worker again, {'conflict', other worker} when another worker claims it, or
-- {'final', state} when it has ended in the meantime (cancelled, reaped): nothing is touched then.
local id, worker, node = ARGV[1], ARGV[2], ARGV[3]
local j = redis.call('HMGET', job_key(id), 'state', 'worker')
if j[1] == 'RUNNING' and j[2] == worker then return {'ok'} end
if j[1] == 'RUNNING' and j[2] and j[2] ~= '' then return {'conflict', j[2]} end
if j[1] and j[1] ~= 'PENDING' and j[1] ~= 'RUNNING' then return {'final', j[1]} end
local previous = j[1] or 'missing'
if not j[1] then
  for i = 4, #ARGV, 2 do redis.call('HSET', job_key(id), ARGV[i], ARGV[i + 1]) end
  redis.call('ZADD', JOBS, id, id)
  if tonumber(redis.call('GET', NEXT_JOB_ID) or 0) < tonumber(id) then redis.call('SET', NEXT_JOB_ID, id) end
end
local fields = {}
for i = 4, #ARGV, 2 do fields[ARGV[i]] = ARGV[i + 1] end
-- move_state keeps the pending-class and dependency indexes in step (a lost job is not in them).
move_state(id, j[1] or 'RUNNING', 'RUNNING')
redis.call('HSET', job_key(id), 'node', node, 'worker', worker,
  'cpu_ids', fields['cpu_ids'] or '', 'started_at', fields['started_at'] or now())
redis.call('SADD', running_key(node), id)
if redis.call('EXISTS', worker_key(worker)) == 1 then
  redis.call('HSET', worker_key(worker), 'state', 'busy', 'job', id)
end
return {'restored', previous}
