-- Record a job's end. ARGV: id, final state, exit code, reason, worker ('' = anyone).
-- Returns 1 when this call settled the job, 2 when it requeued it (NODE_FAIL of a job submitted
-- with requeue), 0 when it had already ended (reaped, cancelled).
local id, worker = ARGV[1], ARGV[5]
-- The caller has killed the job's process group: the host has nothing left to clean up.
local node = redis.call('HGET', job_key(id), 'node')
if node and node ~= '' then redis.call('HDEL', process_groups_key(node), id) end
if worker ~= '' and redis.call('HGET', job_key(id), 'worker') ~= worker then return 0 end
if ARGV[2] == 'NODE_FAIL' then return node_fail(id, ARGV[4]) end
return settle(id, ARGV[2], ARGV[3], ARGV[4])
