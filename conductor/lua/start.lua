-- A worker claims a job placed on its node. ARGV: id, worker name, node.
-- Returns {'run', field, value, ...} or {'skip', why}: a job cancelled, settled or already
-- claimed in the meantime (a duplicate queue entry) is not run twice.
local id, worker, node = ARGV[1], ARGV[2], ARGV[3]
local j = redis.call('HMGET', job_key(id), 'state', 'node', 'worker')
if not j[1] then return {'skip', 'no such job'} end
if j[1] ~= 'RUNNING' then return {'skip', 'job is ' .. j[1]} end
if j[2] ~= node then return {'skip', 'job is placed on node ' .. j[2]} end
if j[3] ~= '' then return {'skip', 'job is already run by ' .. j[3]} end
redis.call('HSET', job_key(id), 'worker', worker)
if redis.call('EXISTS', worker_key(worker)) == 1 then
  -- A live record is a registered worker (registration writes it and its indexes in one step).
  redis.call('HSET', worker_key(worker), 'state', 'busy', 'job', id)
else
  -- A worker whose record expired (and may have been reaped) claims in its own name: it is listed
  -- again, so that if it dies before it re-registers, the reaper still finds it and the job.
  redis.call('SADD', WORKERS, worker)
  if redis.call('SADD', node_workers_key(node), worker) == 1 then  -- a slot more: filed for placement
    local n = redis.call('HMGET', node_key(node), 'total_cpus', 'allocated_cpus')
    redis.call('ZADD', OPEN_NODES_BY_FREE_CPUS, math.max(tonumber(n[1] or 0) - tonumber(n[2] or 0), 0), node)
  end
end
local fields = redis.call('HGETALL', job_key(id))
table.insert(fields, 1, 'run')
return fields
