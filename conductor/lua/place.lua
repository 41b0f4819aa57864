-- Allocate nodes to PENDING jobs that fit, oldest first among those that fit anywhere.
-- A job goes to the node with the fewest free CPUs that still fits it (best fit keeps large holes
-- for large jobs) and only where a worker slot is free. Returns {id, node, id, node, ...}.
-- Pending jobs are indexed per class (cpus:memory:partition): each step looks at the oldest job of
-- every class that fits some node, so a job that fits is found behind any backlog of jobs that
-- do not, and the cost per placed job depends on the numbers of classes, not the backlog.
-- Nodes are found through OPEN_NODES_BY_FREE_CPUS (nodes with a free slot, scored by free CPUs):
-- the best fit is the first entry at or above the job's CPUs whose memory and partition fit, and
-- each node used is checked first (slots, drain, free CPUs), so the index is a hint that a pass
-- corrects, and a placement looks at about one node however large the cluster.
-- ARGV[1] 'full' (the heartbeat's safety pass) looks at every node and rebuilds the index.
-- Whatever adds room files the node itself: a job's end (release), a node declared (node_up), a
-- worker registering or claiming in its own name, a node resumed.
local full = ARGV[1] == 'full'
local class_names = redis.call('SMEMBERS', PENDING_CLASSES)
-- Nothing placeable: no look at the nodes (a job's end with an empty backlog costs one call).
if not full and #class_names == 0 then return {} end

-- What this pass knows of each node it looked at: false when it takes no job now.
local nodes = {}
local function look(name)
  if nodes[name] ~= nil then return nodes[name] end
  local info = false
  local slots = redis.call('SCARD', node_workers_key(name)) - redis.call('SCARD', running_key(name))
  if slots > 0 and redis.call('EXISTS', node_drain_key(name)) == 0 then  -- a drained node takes no new jobs
    local n = redis.call('HMGET', node_key(name), 'total_memory', 'allocated_memory', 'total_cpus', 'allocated_cpus', 'partitions')
    -- After TOTAL_CPUS was lowered, running jobs may hold more than the new total: the
    -- difference, not the free-id set alone, bounds what may be allocated.
    local cpus = math.min(redis.call('ZCARD', free_cpus_key(name)), tonumber(n[3] or 0) - tonumber(n[4] or 0))
    info = {name = name, slots = slots, cpus = math.max(cpus, 0),
      memory = tonumber(n[1] or 0) - tonumber(n[2] or 0), partitions = ',' .. (n[5] or '') .. ','}
  end
  nodes[name] = info
  return info
end

-- File a node in the index as this pass knows it.
local function file(name, info)
  if info and info.slots > 0 then
    redis.call('ZADD', OPEN_NODES_BY_FREE_CPUS, info.cpus, name)
  else
    redis.call('ZREM', OPEN_NODES_BY_FREE_CPUS, name)
  end
end

if full then
  -- OPEN_NODES: where an older release listed nodes to look at (a rolling upgrade); every node is looked at here.
  redis.call('DEL', OPEN_NODES_BY_FREE_CPUS, OPEN_NODES)
  for _, name in ipairs(redis.call('SMEMBERS', NODES)) do
    local info = look(name)
    if info then file(name, info) end
  end
end

local function serves(c, partition)
  -- NODE_PARTITIONS empty (',,') serves every partition; so does a class of an older release ('')
  return c.partitions == ',,' or partition == '' or string.find(c.partitions, ',' .. partition .. ',', 1, true)
end

-- The node with the fewest free CPUs that fits (ties: the first name), or nil. An entry whose
-- node turns out different from its score is corrected and the question asked again.
local batch = 16
local function best_node(cpus, memory, partition)
  while true do
    local offset, again = 0, false
    while not again do
      local found = redis.call('ZRANGEBYSCORE', OPEN_NODES_BY_FREE_CPUS, cpus, '+inf', 'WITHSCORES', 'LIMIT', offset, batch)
      for i = 1, #found, 2 do
        local name, score = found[i], tonumber(found[i + 1])
        local c = look(name)
        if not c or c.slots <= 0 or c.cpus ~= score then
          file(name, c)
          again = true
          break
        end
        if c.memory >= memory and serves(c, partition) then return c end
      end
      if not again and #found < 2 * batch then return nil end
      offset = offset + batch
    end
  end
end

local classes = {}
for _, name in ipairs(class_names) do
  local cpus, memory, partition = string.match(name, '^(%d+):(%d+):?(.*)$')
  if cpus then
    table.insert(classes, {name = name, key = PENDING_CLASS_PREFIX .. name,
      cpus = tonumber(cpus), memory = tonumber(memory), partition = partition})
  else
    redis.call('SREM', PENDING_CLASSES, name)
  end
end

-- The oldest placeable job of a class, with its fields (read_job), and whether another entry
-- follows it; entries that are no longer PENDING (left by a script of an older release during a
-- rolling upgrade) are dropped on the way.
local function head(class)
  while true do
    local first = redis.call('ZRANGE', class.key, 0, 1)
    if #first == 0 then
      redis.call('SREM', PENDING_CLASSES, class.name)
      return nil
    end
    local j = read_job(first[1])
    if j.state == 'PENDING' then return {id = tonumber(first[1]), j = j, more = #first > 1} end
    redis.call('ZREM', class.key, first[1])
  end
end

local placed = {}
local started = nil
local may_add = false  -- whether a move of this pass may have added entries to a class
while true do
  local pick = nil
  for _, class in ipairs(classes) do
    if not class.done then
      if class.node == nil then class.node = best_node(class.cpus, class.memory, class.partition) end
      if class.node == nil then
        class.done = true  -- free room only shrinks during a pass
      else
        if class.first == nil then class.first = head(class) end
        if class.first == nil then
          class.done = true
        elseif pick == nil or class.first.id < pick.first.id then
          pick = class
        end
      end
    end
  end
  if pick == nil then break end
  local id, j, cpus, memory, best = pick.first.id, pick.first.j, pick.cpus, pick.memory, pick.node
  local more = pick.first.more
  pick.first = nil
  local popped = redis.call('ZPOPMIN', free_cpus_key(best.name), cpus)
  local ids = {}
  for i = 1, #popped, 2 do table.insert(ids, popped[i]) end
  redis.call('HINCRBY', node_key(best.name), 'allocated_cpus', cpus)
  if memory ~= 0 then redis.call('HINCRBY', node_key(best.name), 'allocated_memory', memory) end
  redis.call('SADD', running_key(best.name), id)
  -- Its class entry goes here (as pending_remove does), and the class with it once empty: after
  -- the move, which may have made another job of the class placeable (an array's next task, a
  -- dependent). While no move of this pass could add entries (no array task, no job with
  -- dependents), what head saw tells whether the class is empty now, without a look.
  local removed = redis.call('ZREM', pick.key, id) == 1
  may_add = may_add or (j.array_job_id ~= nil and j.array_job_id ~= '') or j.has_dependents ~= '0'
  j.class_removed = true
  started = started or now()
  move_state(id, 'PENDING', 'RUNNING', j, {'node', best.name, 'cpu_ids', table.concat(ids, ','),
    'started_at', started, 'worker', ''})
  local empty
  if may_add then empty = redis.call('EXISTS', pick.key) == 0 else empty = not more end
  if removed and empty then
    redis.call('SREM', PENDING_CLASSES, pick.name)
    pick.done = true
  end
  best.slots, best.cpus, best.memory = best.slots - 1, best.cpus - cpus, best.memory - memory
  file(best.name, best)
  -- The node's room shrank: a class whose best node it was, or which it may now fit more
  -- tightly, asks again.
  for _, class in ipairs(classes) do
    if class.node == best or (class.node ~= nil and best.slots > 0 and best.cpus >= class.cpus
        and best.cpus <= class.node.cpus) then
      class.node = nil
    end
  end
  table.insert(placed, id)
  table.insert(placed, best.name)
end
return placed
