-- A worker claims a job placed on its node. ARGV: id, worker name, node.
-- Returns {'run', field, value, ...} or {'skip', why}: a job cancelled, settled or already
-- claimed in the meantime (a duplicate queue entry) is not run twice.
local id, worker, node = ARGV[1], ARGV[2], ARGV[3]
-- The whole job is read once: the checks use it, and the worker runs what it returns.
local fields = redis.call('HGETALL', job_key(id))
if #fields == 0 then return {'skip', 'no such job'} end
local j, w = {}, nil
for i = 1, #fields, 2 do
  j[fields[i]] = fields[i + 1]
  if fields[i] == 'worker' then w = i + 1 end
end
if j.state ~= 'RUNNING' then return {'skip', 'job is ' .. tostring(j.state)} end
if j.node ~= node then return {'skip', 'job is placed on node ' .. tostring(j.node)} end
if j.worker ~= '' then return {'skip', 'job is already run by ' .. tostring(j.worker)} end
redis.call('HSET', job_key(id), 'worker', worker)
fields[w] = worker
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
table.insert(fields, 1, 'run')
return fields
