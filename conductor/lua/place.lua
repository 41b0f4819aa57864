-- Allocate nodes to the oldest PENDING jobs that fit. ARGV[1]: how many pending jobs to consider.
-- A job goes to the node with the fewest free CPUs that still fits it (best fit keeps large holes
-- for large jobs) and only where a worker slot is free. Returns {id, node, id, node, ...}.
local window = tonumber(ARGV[1])
local candidates = {}
local open_slots = 0
for _, name in ipairs(redis.call('SMEMBERS', NODES)) do
  local slots = redis.call('SCARD', node_workers_key(name)) - redis.call('SCARD', running_key(name))
  if slots > 0 then
    local n = redis.call('HMGET', node_key(name), 'total_memory', 'allocated_memory', 'total_cpus', 'allocated_cpus')
    -- After TOTAL_CPUS was lowered, running jobs may hold more than the new total: the
    -- difference, not the free-id set alone, bounds what may be allocated.
    local cpus = math.min(redis.call('ZCARD', free_cpus_key(name)), tonumber(n[3] or 0) - tonumber(n[4] or 0))
    table.insert(candidates, {name = name, slots = slots, cpus = cpus,
      memory = tonumber(n[1] or 0) - tonumber(n[2] or 0)})
    open_slots = open_slots + slots
  end
end
if open_slots == 0 then return {} end

local placed = {}
local started = now()
for _, id in ipairs(redis.call('ZRANGE', state_key('PENDING'), 0, window - 1)) do
  local j = redis.call('HMGET', job_key(id), 'cpus', 'memory')
  local cpus, memory = tonumber(j[1]), tonumber(j[2])
  local best = nil
  for _, c in ipairs(candidates) do
    if c.slots > 0 and c.cpus >= cpus and c.memory >= memory then
      if best == nil or c.cpus < best.cpus or (c.cpus == best.cpus and c.name < best.name) then best = c end
    end
  end
  if best then
    local popped = redis.call('ZPOPMIN', free_cpus_key(best.name), cpus)
    local ids = {}
    for i = 1, #popped, 2 do table.insert(ids, popped[i]) end
    redis.call('HINCRBY', node_key(best.name), 'allocated_cpus', cpus)
    redis.call('HINCRBY', node_key(best.name), 'allocated_memory', memory)
    redis.call('SADD', running_key(best.name), id)
    move_state(id, 'PENDING', 'RUNNING')
    redis.call('HSET', job_key(id), 'node', best.name, 'cpu_ids', table.concat(ids, ','),
      'started_at', started, 'worker', '')
    best.slots, best.cpus, best.memory = best.slots - 1, best.cpus - cpus, best.memory - memory
    open_slots = open_slots - 1
    table.insert(placed, id)
    table.insert(placed, best.name)
    if open_slots == 0 then break end
  end
end
return placed
