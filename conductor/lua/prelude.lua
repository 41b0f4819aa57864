-- Shared by every conductor script; the key prefixes and suffixes above come from conductor/keys.py.

local function now()
  local t = redis.call('TIME')
  return string.format('%d.%06d', t[1], t[2])
end

local function job_key(id) return JOB_PREFIX .. id end
local function control_key(id) return JOB_PREFIX .. id .. JOB_CONTROL_SUFFIX end
local function state_key(name) return STATE_PREFIX .. name end
local function node_key(name) return NODE_PREFIX .. name end
local function free_cpus_key(name) return NODE_PREFIX .. name .. NODE_FREE_CPUS_SUFFIX end
local function running_key(name) return NODE_PREFIX .. name .. NODE_RUNNING_SUFFIX end
local function node_workers_key(name) return NODE_PREFIX .. name .. NODE_WORKERS_SUFFIX end
local function process_groups_key(name) return NODE_PREFIX .. name .. NODE_PROCESS_GROUPS_SUFFIX end
local function worker_key(name) return WORKER_PREFIX .. name end
local function node_drain_key(name) return NODE_PREFIX .. name .. NODE_DRAIN_SUFFIX end

-- The fields of a job that the transitions below need, read in one HMGET (a transition reads its
-- job once and hands the table on, instead of each helper reading the fields it needs again).
-- ``has_dependents`` is '0' from submit until some job waits on this one (see register_dependents).
local job_fields = {'state', 'worker', 'node', 'cpu_ids', 'cpus', 'memory', 'partition', 'account', 'name',
  'array_job_id', 'has_dependents', 'dependency_state'}
local function read_job(id)
  local values = redis.call('HMGET', job_key(id), unpack(job_fields))
  local j = {}
  for i, field in ipairs(job_fields) do j[field] = values[i] end
  return j
end

-- The per-resource-class index of placeable PENDING jobs (see keys.pending_class); kept in step
-- with state:PENDING by move_state and submit, so placement never scans the backlog.
local function pending_class(id)
  local j = redis.call('HMGET', job_key(id), 'cpus', 'memory', 'partition')
  return (j[1] or '0') .. ':' .. (j[2] or '0') .. ':' .. (j[3] or '')
end

-- ``j``: the job's fields when the caller has them (read_job, or submit's own arguments).
local function pending_add(id, j)
  j = j or read_job(id)
  if j.dependency_state == 'waiting' or j.dependency_state == 'never' then return end  -- not placeable until its dependency is met
  local class = (j.cpus or '0') .. ':' .. (j.memory or '0') .. ':' .. (j.partition or '')  -- as pending_class
  redis.call('ZADD', PENDING_CLASS_PREFIX .. class, id, id)
  redis.call('SADD', PENDING_CLASSES, class)
end

local function pending_remove(id, j)
  local class = (j.cpus or '0') .. ':' .. (j.memory or '0') .. ':' .. (j.partition or '')  -- as pending_class
  local key = PENDING_CLASS_PREFIX .. class
  if redis.call('ZREM', key, id) == 1 and redis.call('EXISTS', key) == 0 then
    redis.call('SREM', PENDING_CLASSES, class)
  end
end

-- Dependencies (--dependency, normalised by conductor/workflow.py): 'yes', 'no' (not yet) or 'never'.
local function dependents_key(id) return JOB_PREFIX .. id .. JOB_DEPENDENTS_SUFFIX end
local function active_name_key(account, name)
  return ACTIVE_NAME_PREFIX .. string.len(account) .. ':' .. account .. ':' .. name
end

local function array_key(id) return ARRAY_PREFIX .. id end

-- A dependency on a whole array (afterok:<array job id>) is on every one of its tasks.
local function array_met(kind, key)
  local a = redis.call('HMGET', key, 'count', 'ended', 'bad', 'begun')
  local count, ended, bad = tonumber(a[1]), tonumber(a[2] or 0), tonumber(a[3] or 0)
  if kind == 'after' then return tonumber(a[4] or 0) >= count and 'yes' or 'no' end
  if kind == 'afterok' and bad > 0 then return 'never' end
  if ended < count then return 'no' end
  if kind == 'afternotok' then return bad > 0 and 'yes' or 'never' end
  return 'yes'
end

-- A parent as a dependency names it: '5', '5_7', or with after's delay '5+10' (minutes).
local function parent_and_delay(token)
  local parent, minutes = string.match(token, '^([%d_]+)%+(%d+)$')
  if parent then return parent, tonumber(minutes) end
  return token, 0
end

-- after:ID+time, once ID has started: 'yes' when ``minutes`` have passed since it started (or
-- ended without starting), else 'no' with a timer for job ``id``, which the maintenance pass
-- re-evaluates when it is due (release_timers).
local function after_delay(id, parent, minutes)
  local record = parent
  local array_id, index = string.match(parent, '^(%d+)_(%d+)$')
  if array_id then record = redis.call('HGET', array_key(array_id), 'task:' .. index) end
  local since
  if record then
    local t = redis.call('HMGET', job_key(record), 'started_at', 'ended_at')
    since = tonumber(t[1] ~= '' and t[1] or t[2] or '')
  end
  -- No time recorded yet: the parent is starting (or ending unstarted) in this very transition,
  -- whose script writes the time after it has notified the dependents. Count from now.
  since = since or tonumber(now())
  local due = since + 60 * minutes
  if tonumber(now()) >= due then return 'yes' end
  redis.call('ZADD', DEPENDENCY_TIMERS, due, id)
  return 'no'
end

local function after_met(kind, parent)
  local state
  local array_id, index = string.match(parent, '^(%d+)_(%d+)$')
  if array_id then
    local key = array_key(array_id)
    local task = redis.call('HGET', key, 'task:' .. index)
    if task then
      state = redis.call('HGET', job_key(task), 'state')
    elseif redis.call('SISMEMBER', key .. ARRAY_SKIP_SUFFIX, index) == 1 or redis.call('HGET', key, 'cancelled') == '1' then
      state = 'CANCELLED'
    elseif redis.call('EXISTS', key) == 1 then
      state = 'PENDING'
    end
  elseif redis.call('EXISTS', array_key(parent)) == 1 then
    return array_met(kind, array_key(parent))
  else
    state = redis.call('HGET', job_key(parent), 'state')
  end
  if not state then return 'never' end
  if kind == 'after' then return state == 'PENDING' and 'no' or 'yes' end
  if state == 'PENDING' or state == 'RUNNING' then return 'no' end
  if kind == 'afterany' then return 'yes' end
  if kind == 'afterok' then return state == 'COMPLETED' and 'yes' or 'never' end
  return state ~= 'COMPLETED' and 'yes' or 'never'  -- afternotok
end

local function condition_met(id, condition)
  local kind = string.match(condition, '^(%a+)')
  if kind == 'singleton' then
    local j = redis.call('HMGET', job_key(id), 'account', 'name')
    local earlier = redis.call('ZRANGEBYSCORE', active_name_key(j[1], j[2]), '-inf', '(' .. id, 'LIMIT', 0, 1)
    return #earlier == 0 and 'yes' or 'no'
  end
  local result = 'yes'
  for token in string.gmatch(string.sub(condition, #kind + 2), '[^:]+') do
    local parent, minutes = parent_and_delay(token)
    local met = after_met(kind, parent)
    if met == 'yes' and minutes > 0 then met = after_delay(id, parent, minutes) end
    if met == 'never' then return 'never' end
    if met == 'no' then result = 'no' end
  end
  return result
end

local function dependency_met(id, dependency)
  local any_of = string.find(dependency, '?', 1, true) ~= nil
  local count, yes, never = 0, 0, 0
  for condition in string.gmatch(dependency, '[^,?]+') do
    count = count + 1
    local met = condition_met(id, condition)
    if met == 'yes' then yes = yes + 1 elseif met == 'never' then never = never + 1 end
  end
  if any_of then
    if yes > 0 then return 'yes' end
    if never == count then return 'never' end
    return 'no'
  end
  if never > 0 then return 'never' end
  if yes == count then return 'yes' end
  return 'no'
end

-- Defined below (a dependency that can never be met may cancel its job).
local settle, cancel_array_rest

-- A PENDING job waiting on its dependency becomes placeable once it is met, and stays PENDING
-- with reason DependencyNeverSatisfied once it cannot be (as Slurm); a job submitted under
-- KILL_INVALID_DEPEND (Slurm's kill_invalid_depend) is cancelled instead, with the part of its
-- array not yet materialised, which shares its dependency.
local function update_dependency(id)
  local j = redis.call('HMGET', job_key(id), 'state', 'dependency_state', 'dependency')
  if j[1] ~= 'PENDING' or j[2] ~= 'waiting' then return end
  local met = dependency_met(id, j[3])
  if met == 'yes' then
    redis.call('HSET', job_key(id), 'dependency_state', 'met', 'reason', '')
    pending_add(id)
  elseif met == 'never' then
    redis.call('HSET', job_key(id), 'dependency_state', 'never', 'reason', 'DependencyNeverSatisfied')
    local k = redis.call('HMGET', job_key(id), 'kill_invalid_depend', 'array_job_id')
    if k[1] == '1' then
      if k[2] and k[2] ~= '' then cancel_array_rest(k[2]) end
      settle(id, 'CANCELLED', '', 'DependencyNeverSatisfied')
    end
  end
end

-- Every job a dependency names tells the dependent when it starts or ends (an array task: its
-- array, whose id is its first task's). Singleton: every earlier job of the same account and name.
local function register_dependents(id, dependency, active)
  for condition in string.gmatch(dependency, '[^,?]+') do
    if condition == 'singleton' then
      for _, other in ipairs(redis.call('ZRANGEBYSCORE', active, '-inf', '(' .. id)) do
        redis.call('SADD', dependents_key(other), id)
        redis.call('HSET', job_key(other), 'has_dependents', 1)
      end
    else
      local kind = string.match(condition, '^(%a+)')
      for token in string.gmatch(string.sub(condition, #kind + 2), '[^:]+') do
        local parent = parent_and_delay(token)
        local array_id = string.match(parent, '^(%d+)_%d+$') or parent
        local state = redis.call('HGET', job_key(array_id), 'state')
        if state == 'PENDING' or state == 'RUNNING' or redis.call('EXISTS', array_key(array_id)) == 1 then
          redis.call('SADD', dependents_key(array_id), id)
          -- A job's own transitions look for dependents only when flagged (an array's tasks always do).
          if state == 'PENDING' or state == 'RUNNING' then redis.call('HSET', job_key(array_id), 'has_dependents', 1) end
        end
      end
    end
  end
end

-- Re-evaluate the dependents of job (or array) ``id``; forget them once nothing can change.
local function notify_dependents(id, done)
  for _, child in ipairs(redis.call('SMEMBERS', dependents_key(id))) do update_dependency(child) end
  if done then redis.call('DEL', dependents_key(id)) end
end

-- The next index at an array's cursor (run, next), advancing it; nil once every index is out.
local function next_task_index(key)
  local a = redis.call('HMGET', key, 'spec', 'run', 'next')
  local runs = {}
  for first, last, step in string.gmatch(a[1], '(%d+)-(%d+):(%d+)') do
    table.insert(runs, {tonumber(first), tonumber(last), tonumber(step)})
  end
  local run, value = tonumber(a[2]), tonumber(a[3])
  while run <= #runs do
    local index = value
    value = index + runs[run][3]
    if value > runs[run][2] then
      run = run + 1
      value = runs[run] and runs[run][1] or 0
    end
    redis.call('HSET', key, 'run', run, 'next', value)
    if redis.call('SISMEMBER', key .. ARRAY_SKIP_SUFFIX, index) == 0 then return index end
  end
  return nil
end

-- Materialise an array's tasks lazily: one PENDING task at a time (placing it materialises the
-- next, in the same pass), and never more tasks not yet ended than its %N limit.
local function array_fill(array_id)
  local key = array_key(array_id)
  local a = redis.call('HMGET', key, 'limit', 'cancelled')
  if a[2] == '1' then return end
  local limit = tonumber(a[1] or 0)
  while tonumber(redis.call('HGET', key, 'pending') or 0) < 1
      and (limit == 0 or redis.call('ZCARD', key .. ARRAY_TASKS_SUFFIX) < limit) do
    local index = next_task_index(key)
    if not index then return end
    local id = redis.call('INCR', NEXT_JOB_ID)
    redis.call('HSET', job_key(id), unpack(redis.call('HGETALL', key .. ARRAY_TEMPLATE_SUFFIX)))
    redis.call('HSET', job_key(id), 'id', id, 'state', 'PENDING', 'submitted_at', now(), 'array_task_id', index,
      'has_dependents', 0)
    redis.call('ZADD', JOBS, id, id)
    redis.call('ZADD', state_key('PENDING'), id, id)
    redis.call('ZADD', key .. ARRAY_TASKS_SUFFIX, id, id)
    redis.call('HSET', key, 'task:' .. index, id)
    redis.call('HINCRBY', key, 'pending', 1)
    redis.call('HINCRBY', key, 'materialized', 1)
    local j = redis.call('HMGET', job_key(id), 'account', 'name', 'dependency')
    local active = active_name_key(j[1], j[2])
    redis.call('ZADD', active, id, id)
    if j[3] and j[3] ~= '' then
      register_dependents(id, j[3], active)
      redis.call('HSET', job_key(id), 'dependency_state', 'waiting', 'reason', 'Dependency')
      update_dependency(id)
    end
    pending_add(id)
  end
end

local function array_done(key)
  local a = redis.call('HMGET', key, 'ended', 'count')
  return tonumber(a[1] or 0) >= tonumber(a[2] or 0)
end

-- Cancel the part of an array not yet materialised, at once: none of it will ever start (its
-- materialised tasks are the caller's to cancel).
function cancel_array_rest(array_id)
  local key = array_key(array_id)
  if redis.call('HGET', key, 'cancelled') == '1' then return end
  local a = redis.call('HMGET', key, 'count', 'materialized')
  local left = tonumber(a[1]) - tonumber(a[2]) - redis.call('SCARD', key .. ARRAY_SKIP_SUFFIX)
  redis.call('HSET', key, 'cancelled', 1)
  for _, field in ipairs({'ended', 'bad', 'begun'}) do redis.call('HINCRBY', key, field, left) end
  notify_dependents(array_id, array_done(key))
end

-- ``j``: the job's fields read before (read_job), or nil; ``fields``: more fields to write with
-- the new state (field, value, ...), in the same HSET.
local function move_state(id, from, to, j, fields)
  j = j or read_job(id)
  redis.call('ZREM', state_key(from), id)
  redis.call('ZADD', state_key(to), id, id)
  local write = {'state', to}
  for _, v in ipairs(fields or {}) do table.insert(write, v) end
  redis.call('HSET', job_key(id), unpack(write))
  if from == 'PENDING' and not j.class_removed then pending_remove(id, j) end
  if to == 'PENDING' then pending_add(id) end
  local final = to ~= 'PENDING' and to ~= 'RUNNING'
  if final and j.account and j.name then redis.call('ZREM', active_name_key(j.account, j.name), id) end
  local array_id = j.array_job_id
  if array_id == '' then array_id = nil end
  if array_id then
    local key = array_key(array_id)
    if from == 'PENDING' then
      redis.call('HINCRBY', key, 'pending', -1)
      redis.call('HINCRBY', key, 'begun', 1)
    end
    if to == 'PENDING' then redis.call('HINCRBY', key, 'pending', 1) end
    if final then
      redis.call('ZREM', key .. ARRAY_TASKS_SUFFIX, id)
      redis.call('HINCRBY', key, 'ended', 1)
      if to ~= 'COMPLETED' then redis.call('HINCRBY', key, 'bad', 1) end
    end
  end
  -- Dependents are released in the very transition that meets their dependency.
  if from == 'PENDING' or final then
    if array_id then
      notify_dependents(array_id, final and array_done(array_key(array_id)))
    elseif j.has_dependents ~= '0' then  -- absent: stored by an older release, which kept no such mark
      notify_dependents(id, final)
    end
  end
  if array_id then array_fill(array_id) end
end

-- Give a RUNNING job's CPUs and memory back to its node; the only place resources are released.
-- ``j``: the job's fields read before (read_job), or nil.
local function release(id, j)
  j = j or read_job(id)
  local node = j.node
  if redis.call('SREM', running_key(node), id) == 0 then return end
  local total = tonumber(redis.call('HGET', node_key(node), 'total_cpus') or 0)
  local free = {}
  for cpu in string.gmatch(j.cpu_ids or '', '%d+') do
    if tonumber(cpu) < total then table.insert(free, cpu); table.insert(free, cpu) end
  end
  if #free > 0 then redis.call('ZADD', free_cpus_key(node), unpack(free)) end
  local allocated = redis.call('HINCRBY', node_key(node), 'allocated_cpus', 0 - tonumber(j.cpus or 0))
  if tonumber(j.memory or 0) ~= 0 then
    redis.call('HINCRBY', node_key(node), 'allocated_memory', 0 - tonumber(j.memory))
  end
  -- A slot is free again: the node goes back into placement's index, scored by its free CPUs
  -- (placement checks the node before it uses it, so a stale score costs a look, never a wrong start).
  redis.call('ZADD', OPEN_NODES_BY_FREE_CPUS, math.max(total - allocated, 0), node)
end

-- Put a PENDING or RUNNING job into its final state exactly once; returns 1 if this call did it.
-- ``j``: the job's fields read before (read_job), or nil; ``idle``: a worker the caller has already
-- set idle.
function settle(id, final, exit_code, reason, j, idle)
  j = j or read_job(id)
  local current, worker = j.state, j.worker
  if current ~= 'PENDING' and current ~= 'RUNNING' then return 0 end
  if current == 'RUNNING' then release(id, j) end
  move_state(id, current, final, j, {'exit_code', exit_code, 'reason', reason, 'ended_at', now()})
  redis.call('DEL', control_key(id))
  if worker and worker ~= '' and worker ~= idle and redis.call('HGET', worker_key(worker), 'job') == tostring(id) then
    redis.call('HSET', worker_key(worker), 'state', 'idle', 'job', '')
  end
  return 1
end

-- A job whose worker died: back to PENDING once if it was submitted with requeue (as sbatch
-- --requeue), else NODE_FAIL. Returns 2 when requeued, 1 when settled, 0 when it had ended.
local function node_fail(id, reason)
  local j = redis.call('HMGET', job_key(id), 'state', 'requeue', 'requeued', 'worker', 'cancel_reason')
  -- A cancel its worker could not act on any more is still the user's last word.
  if j[1] == 'RUNNING' and j[5] then return settle(id, 'CANCELLED', '', j[5]) end
  if j[1] ~= 'RUNNING' then return settle(id, 'NODE_FAIL', '', reason) end
  if j[2] ~= '1' or tonumber(j[3] or 0) > 0 then return settle(id, 'NODE_FAIL', '', reason) end
  release(id)
  move_state(id, 'RUNNING', 'PENDING')
  redis.call('HSET', job_key(id), 'node', '', 'cpu_ids', '', 'started_at', '', 'worker', '',
    'requeued', 1, 'reason', 'requeued once: ' .. reason)
  redis.call('DEL', control_key(id))
  if j[4] and j[4] ~= '' and redis.call('HGET', worker_key(j[4]), 'job') == tostring(id) then
    redis.call('HSET', worker_key(j[4]), 'state', 'idle', 'job', '')
  end
  return 2
end

local function worker_processes_key(name) return NODE_PREFIX .. name .. NODE_WORKER_PROCESSES_SUFFIX end

-- Whether reaping is held off: after an outage every worker gets a grace period to register again.
local function in_grace()
  local until_ = tonumber(redis.call('HGET', LIVENESS, 'grace_until') or 0)
  return tonumber(now()) < until_
end

-- Hand placed-but-unclaimed jobs of ``node`` back to PENDING while it has more of them than
-- worker slots (the newest give way first). Returns how many went back.
local function hand_back(node)
  local unclaimed = {}
  for _, id in ipairs(redis.call('SMEMBERS', running_key(node))) do
    if redis.call('HGET', job_key(id), 'worker') == '' then table.insert(unclaimed, tonumber(id)) end
  end
  table.sort(unclaimed, function(a, b) return a > b end)
  local surplus = redis.call('SCARD', running_key(node)) - redis.call('SCARD', node_workers_key(node))
  local count = 0
  for i = 1, math.min(surplus, #unclaimed) do
    local id = unclaimed[i]
    release(id)
    move_state(id, 'RUNNING', 'PENDING')
    redis.call('HSET', job_key(id), 'node', '', 'cpu_ids', '', 'started_at', '')
    count = count + 1
  end
  return count
end
