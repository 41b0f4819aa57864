-- Store a new PENDING job. ARGV: field, value, ... (already validated). Returns the new id.
-- ARGV may start with 'id', <id>: an id the client reserved beforehand (with sentinels, an INCR a
-- replica confirmed), so that no later primary can hand it out again. Then 0 is returned when a job
-- already holds that id, and the counter is raised to it (this may be a primary that never saw the
-- reservation).
local fields, id = ARGV, nil
if ARGV[1] == 'id' then
  id = tonumber(ARGV[2])
  fields = {unpack(ARGV, 3)}
  if redis.call('EXISTS', job_key(id)) == 1 then return 0 end
  if tonumber(redis.call('GET', NEXT_JOB_ID) or 0) < id then redis.call('SET', NEXT_JOB_ID, id) end
else
  id = redis.call('INCR', NEXT_JOB_ID)
end
redis.call('HSET', job_key(id), 'id', id, 'state', 'PENDING', 'submitted_at', now(), 'has_dependents', 0,
  unpack(fields))
redis.call('ZADD', JOBS, id, id)
redis.call('ZADD', state_key('PENDING'), id, id)
local f = {}  -- the job's fields, from the arguments: nothing is read back
for i = 1, #fields - 1, 2 do f[fields[i]] = fields[i + 1] end
local j = {f.account, f.name, f.dependency, f.array}
local active = active_name_key(j[1] or '', j[2] or '')
redis.call('ZADD', active, id, id)
if j[4] and j[4] ~= '' then
  -- A job array: this job is its first task and its id the array's; the other tasks are
  -- materialised from a template as they become placeable (see array_fill).
  local key = array_key(id)
  local spec, limit = j[4], string.match(j[4], '%%(%d+)$') or '0'
  local first = tonumber(string.match(spec, '^(%d+)'))
  redis.call('HSET', key .. ARRAY_TEMPLATE_SUFFIX, unpack(fields))
  redis.call('HSET', key .. ARRAY_TEMPLATE_SUFFIX, 'array_job_id', id)
  redis.call('HSET', key, 'spec', spec, 'limit', limit, 'run', 1, 'next', first, 'pending', 1,
    'materialized', 1, 'ended', 0, 'bad', 0, 'begun', 0, 'count', redis.call('HGET', job_key(id), 'array_task_count'))
  next_task_index(key)
  redis.call('HSET', job_key(id), 'array_job_id', id, 'array_task_id', first)
  redis.call('HSET', key, 'task:' .. first, id)
  redis.call('ZADD', key .. ARRAY_TASKS_SUFFIX, id, id)
end
if j[3] and j[3] ~= '' then
  register_dependents(id, j[3], active)
  redis.call('HSET', job_key(id), 'dependency_state', 'waiting', 'reason', 'Dependency')
  update_dependency(id)
  pending_add(id)  -- placeable only once its dependency is met: read what update_dependency decided
else
  pending_add(id, f)
end
return id
