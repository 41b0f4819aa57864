-- Record a job's end. ARGV: id, final state, exit code, reason, worker ('' = anyone).
-- Returns 1 when this call settled the job, 0 when it had already ended (reaped, cancelled).
local id, worker = ARGV[1], ARGV[5]
if worker ~= '' and redis.call('HGET', job_key(id), 'worker') ~= worker then return 0 end
return settle(id, ARGV[2], ARGV[3], ARGV[4])
