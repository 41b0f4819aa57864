-- Shared by every conductor script; the key prefixes above come from conductor/keys.py.

local function now()
  local t = redis.call('TIME')
  return string.format('%d.%06d', t[1], t[2])
end

local function job_key(id) return JOB_PREFIX .. id end
local function control_key(id) return JOB_PREFIX .. id .. ':control' end
local function state_key(name) return STATE_PREFIX .. name end
local function node_key(name) return NODE_PREFIX .. name end
local function free_cpus_key(name) return NODE_PREFIX .. name .. ':free-cpus' end
local function running_key(name) return NODE_PREFIX .. name .. ':running' end
local function node_workers_key(name) return NODE_PREFIX .. name .. ':workers' end
local function process_groups_key(name) return NODE_PREFIX .. name .. ':process-groups' end
local function worker_key(name) return WORKER_PREFIX .. name end
local function node_drain_key(name) return NODE_PREFIX .. name .. ':drain' end

-- The per-resource-class index of placeable PENDING jobs (see keys.pending_class); kept in step
-- with state:PENDING by move_state and submit, so placement never scans the backlog.
local function pending_class(id)
  local j = redis.call('HMGET', job_key(id), 'cpus', 'memory', 'partition')
  return (j[1] or '0') .. ':' .. (j[2] or '0') .. ':' .. (j[3] or '')
end

local function pending_add(id)
  local held = redis.call('HGET', job_key(id), 'dependency_state')
  if held == 'waiting' or held == 'never' then return end  -- not placeable until its dependency is met
  local class = pending_class(id)
  redis.call('ZADD', PENDING_CLASS_PREFIX .. class, id, id)
  redis.call('SADD', PENDING_CLASSES, class)
end

local function pending_remove(id)
  local class = pending_class(id)
  local key = PENDING_CLASS_PREFIX .. class
  if redis.call('ZREM', key, id) == 1 and redis.call('EXISTS', key) == 0 then
    redis.call('SREM', PENDING_CLASSES, class)
  end
end

-- Dependencies (--dependency, normalised by conductor/workflow.py): 'yes', 'no' (not yet) or 'never'.
local function dependents_key(id) return JOB_PREFIX .. id .. ':dependents' end
local function active_name_key(account, name)
  return ACTIVE_NAME_PREFIX .. string.len(account) .. ':' .. account .. ':' .. name
end

local function after_met(kind, parent)
  local state = redis.call('HGET', job_key(parent), 'state')
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
  for parent in string.gmatch(string.sub(condition, #kind + 2), '[^:]+') do
    local met = after_met(kind, parent)
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

-- A PENDING job waiting on its dependency becomes placeable once it is met, and stays PENDING
-- with reason DependencyNeverSatisfied once it cannot be (as Slurm).
local function update_dependency(id)
  local j = redis.call('HMGET', job_key(id), 'state', 'dependency_state', 'dependency')
  if j[1] ~= 'PENDING' or j[2] ~= 'waiting' then return end
  local met = dependency_met(id, j[3])
  if met == 'yes' then
    redis.call('HSET', job_key(id), 'dependency_state', 'met', 'reason', '')
    pending_add(id)
  elseif met == 'never' then
    redis.call('HSET', job_key(id), 'dependency_state', 'never', 'reason', 'DependencyNeverSatisfied')
  end
end

local function move_state(id, from, to)
  redis.call('ZREM', state_key(from), id)
  redis.call('ZADD', state_key(to), id, id)
  redis.call('HSET', job_key(id), 'state', to)
  if from == 'PENDING' then pending_remove(id) end
  if to == 'PENDING' then pending_add(id) end
  local final = to ~= 'PENDING' and to ~= 'RUNNING'
  if final then
    local j = redis.call('HMGET', job_key(id), 'account', 'name')
    if j[1] and j[2] then redis.call('ZREM', active_name_key(j[1], j[2]), id) end
  end
  -- Dependents are released in the very transition that meets their dependency.
  if from == 'PENDING' or final then
    for _, child in ipairs(redis.call('SMEMBERS', dependents_key(id))) do update_dependency(child) end
    if final then redis.call('DEL', dependents_key(id)) end
  end
end

-- Give a RUNNING job's CPUs and memory back to its node; the only place resources are released.
local function release(id)
  local j = redis.call('HMGET', job_key(id), 'node', 'cpu_ids', 'cpus', 'memory')
  local node = j[1]
  if redis.call('SREM', running_key(node), id) == 0 then return end
  local total = tonumber(redis.call('HGET', node_key(node), 'total_cpus') or 0)
  for cpu in string.gmatch(j[2] or '', '%d+') do
    if tonumber(cpu) < total then redis.call('ZADD', free_cpus_key(node), cpu, cpu) end
  end
  redis.call('HINCRBY', node_key(node), 'allocated_cpus', 0 - tonumber(j[3]))
  redis.call('HINCRBY', node_key(node), 'allocated_memory', 0 - tonumber(j[4]))
end

-- Put a PENDING or RUNNING job into its final state exactly once; returns 1 if this call did it.
local function settle(id, final, exit_code, reason)
  local j = redis.call('HMGET', job_key(id), 'state', 'worker')
  local current, worker = j[1], j[2]
  if current ~= 'PENDING' and current ~= 'RUNNING' then return 0 end
  if current == 'RUNNING' then release(id) end
  move_state(id, current, final)
  redis.call('HSET', job_key(id), 'exit_code', exit_code, 'reason', reason, 'ended_at', now())
  redis.call('DEL', control_key(id))
  if worker and worker ~= '' and redis.call('HGET', worker_key(worker), 'job') == tostring(id) then
    redis.call('HSET', worker_key(worker), 'state', 'idle', 'job', '')
  end
  return 1
end

-- A job whose worker died: back to PENDING once if it was submitted with requeue (as sbatch
-- --requeue), else NODE_FAIL. Returns 2 when requeued, 1 when settled, 0 when it had ended.
local function node_fail(id, reason)
  local j = redis.call('HMGET', job_key(id), 'state', 'requeue', 'requeued', 'worker')
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
