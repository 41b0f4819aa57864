-- Record a job's end. ARGV: id, final state, exit code, reason, worker ('' = anyone),
-- process-group field of the caller's attempt ('' = none); from a contained job also the node
-- that ran it and what it used: max_rss (bytes), cpu_time (seconds), oom_killed (1 or 0).
-- Returns 1 when this call settled the job, 2 when it requeued it (NODE_FAIL of a job submitted
-- with requeue), 0 when it had already ended (reaped, cancelled) or belongs to another worker.
local id, worker, attempt = ARGV[1], ARGV[5], ARGV[6]
local j = read_job(id)  -- once, for every step below
-- What the job used is recorded whoever settled it, in the same step as its end (one round trip
-- per job, never an end without its usage); an OOM kill is counted for the node once, also when a
-- caller sends the end again because the reply to its first try was lost.
if ARGV[8] and ARGV[8] ~= '' and j.state then
  if ARGV[10] == '1' and redis.call('HGET', job_key(id), 'oom_killed') ~= '1' then
    redis.call('HINCRBY', node_key(ARGV[7]), 'oom_kills', 1)
  end
  redis.call('HSET', job_key(id), 'max_rss', ARGV[8], 'cpu_time', ARGV[9], 'oom_killed', ARGV[10])
end
local node, owner = j.node, j.worker
-- The caller has killed its own attempt's processes: only that attempt's entry goes, whoever
-- owns the job now (another attempt's entry is never touched).
if attempt and attempt ~= '' and node and node ~= '' then redis.call('HDEL', process_groups_key(node), attempt) end
-- The caller is done with the job whatever happened to it meanwhile (reaped while it ran, then
-- registered again as busy): its record must not keep saying it runs it.
local idle = nil
if worker ~= '' and redis.call('HGET', worker_key(worker), 'job') == tostring(id) then
  redis.call('HSET', worker_key(worker), 'state', 'idle', 'job', '')
  idle = worker
end
if worker ~= '' and owner ~= worker then return 0 end
if ARGV[2] == 'NODE_FAIL' then return node_fail(id, ARGV[4]) end
return settle(id, ARGV[2], ARGV[3], ARGV[4], j, idle)
