-- Allocate nodes to PENDING jobs that fit, oldest first among those that fit anywhere.
-- A job goes to the node with the fewest free CPUs that still fits it (best fit keeps large holes
-- for large jobs) and only where a worker slot is free. Returns {id, node, id, node, ...}.
-- Pending jobs are indexed per class (cpus:memory:partition): each step looks at the oldest job of
-- every class that fits some node, so a job that fits is found behind any backlog of jobs that
-- do not, and the cost per placed job depends on the numbers of classes and nodes, not the backlog.
-- ARGV[1] 'full' (the heartbeat's safety pass) looks at every node and rebuilds OPEN_NODES; any
-- other pass looks only at the nodes in it, so its cost does not grow with the cluster.
local full = ARGV[1] == 'full'
-- Nothing placeable: no pass over the nodes (a job's end with an empty backlog costs one call).
if not full and redis.call('SCARD', PENDING_CLASSES) == 0 then return {} end
local candidates = {}
local open_slots = 0
for _, name in ipairs(redis.call('SMEMBERS', full and NODES or OPEN_NODES)) do
  local slots = redis.call('SCARD', node_workers_key(name)) - redis.call('SCARD', running_key(name))
  if slots <= 0 or redis.call('EXISTS', node_drain_key(name)) == 1 then  -- a drained node takes no new jobs
    redis.call('SREM', OPEN_NODES, name)
  else
    if full then redis.call('SADD', OPEN_NODES, name) end
    local n = redis.call('HMGET', node_key(name), 'total_memory', 'allocated_memory', 'total_cpus', 'allocated_cpus', 'partitions')
    -- After TOTAL_CPUS was lowered, running jobs may hold more than the new total: the
    -- difference, not the free-id set alone, bounds what may be allocated.
    local cpus = math.min(redis.call('ZCARD', free_cpus_key(name)), tonumber(n[3] or 0) - tonumber(n[4] or 0))
    table.insert(candidates, {name = name, slots = slots, cpus = cpus,
      memory = tonumber(n[1] or 0) - tonumber(n[2] or 0), partitions = ',' .. (n[5] or '') .. ','})
    open_slots = open_slots + slots
  end
end
if open_slots == 0 then return {} end

local function best_node(cpus, memory, partition)
  local best = nil
  for _, c in ipairs(candidates) do
    -- NODE_PARTITIONS empty (',,') serves every partition; so does a class of an older release ('')
    if c.slots > 0 and c.cpus >= cpus and c.memory >= memory and (c.partitions == ',,' or partition == ''
        or string.find(c.partitions, ',' .. partition .. ',', 1, true)) then
      if best == nil or c.cpus < best.cpus or (c.cpus == best.cpus and c.name < best.name) then best = c end
    end
  end
  return best
end

local classes = {}
for _, name in ipairs(redis.call('SMEMBERS', PENDING_CLASSES)) do
  local cpus, memory, partition = string.match(name, '^(%d+):(%d+):?(.*)$')
  if cpus then
    table.insert(classes, {name = name, key = PENDING_CLASS_PREFIX .. name,
      cpus = tonumber(cpus), memory = tonumber(memory), partition = partition})
  else
    redis.call('SREM', PENDING_CLASSES, name)
  end
end

-- The oldest placeable job of a class; entries that are no longer PENDING (left by a script of
-- an older release during a rolling upgrade) are dropped on the way.
local function head(class)
  while true do
    local first = redis.call('ZRANGE', class.key, 0, 0)
    if #first == 0 then
      redis.call('SREM', PENDING_CLASSES, class.name)
      return nil
    end
    if redis.call('HGET', job_key(first[1]), 'state') == 'PENDING' then return tonumber(first[1]) end
    redis.call('ZREM', class.key, first[1])
  end
end

local placed = {}
local started = now()
while open_slots > 0 do
  local pick, pick_node = nil, nil
  for _, class in ipairs(classes) do
    if not class.done then
      local node = best_node(class.cpus, class.memory, class.partition)
      if node == nil then
        class.done = true  -- free room only shrinks during a pass
      else
        if class.first == nil then class.first = head(class) end
        if class.first == nil then
          class.done = true
        elseif pick == nil or class.first < pick.first then
          pick, pick_node = class, node
        end
      end
    end
  end
  if pick == nil then break end
  local id, cpus, memory, best = pick.first, pick.cpus, pick.memory, pick_node
  pick.first = nil
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
  if best.slots == 0 then redis.call('SREM', OPEN_NODES, best.name) end
  open_slots = open_slots - 1
  table.insert(placed, id)
  table.insert(placed, best.name)
end
return placed
