-- Declare (or re-declare) a node's totals. ARGV: node, total CPUs, total memory, partitions
-- (comma-separated, '' = every partition).
-- The free-CPU set and the allocations are rebuilt from the node's running jobs, so the books
-- heal themselves whenever a worker starts, and a changed TOTAL_CPUS takes effect at once.
local name, total_cpus, total_memory = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local held, cpus, memory = {}, 0, 0
for _, id in ipairs(redis.call('SMEMBERS', running_key(name))) do
  local j = redis.call('HMGET', job_key(id), 'cpu_ids', 'cpus', 'memory')
  for cpu in string.gmatch(j[1] or '', '%d+') do held[tonumber(cpu)] = true end
  cpus = cpus + tonumber(j[2] or 0)
  memory = memory + tonumber(j[3] or 0)
end
redis.call('DEL', free_cpus_key(name))
for cpu = 0, total_cpus - 1 do
  if not held[cpu] then redis.call('ZADD', free_cpus_key(name), cpu, cpu) end
end
redis.call('HSET', node_key(name), 'name', name, 'total_cpus', total_cpus, 'total_memory', total_memory,
  'allocated_cpus', cpus, 'allocated_memory', memory, 'partitions', ARGV[4] or '')
redis.call('SADD', NODES, name)
-- Filed for placement with its free CPUs (placement checks its slots and drain before using it).
redis.call('ZADD', OPEN_NODES_BY_FREE_CPUS, math.max(total_cpus - cpus, 0), name)
-- The largest node, for checking submissions in one read (totals change only here).
local most_cpus, most_memory = 0, 0
for _, node in ipairs(redis.call('SMEMBERS', NODES)) do
  local n = redis.call('HMGET', node_key(node), 'total_cpus', 'total_memory')
  most_cpus = math.max(most_cpus, tonumber(n[1] or 0))
  most_memory = math.max(most_memory, tonumber(n[2] or 0))
end
redis.call('HSET', LARGEST_NODE, 'cpus', most_cpus, 'memory', most_memory)
-- The per-class index of pending jobs heals the same way (a release without it left none).
if redis.call('EXISTS', PENDING_CLASSES) == 0 then
  for _, id in ipairs(redis.call('ZRANGE', state_key('PENDING'), 0, -1)) do pending_add(id) end
end
return 1
