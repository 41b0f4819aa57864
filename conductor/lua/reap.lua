-- Settle what a dead worker left behind. ARGV: worker name, node, 'force' (skip the grace period:
-- the worker was proven dead on its own host).
-- Its job ends NODE_FAIL (or is requeued once, if submitted so; CANCELLED if a cancel was pending).
-- Jobs placed on the node but not yet claimed go back to PENDING while the node has more placed
-- jobs than workers left. Does nothing when the worker's record exists again (it re-registered)
-- or during the grace period after an outage. Returns the ids of the jobs it ended or requeued.
local name, node = ARGV[1], ARGV[2]
if redis.call('EXISTS', worker_key(name)) == 1 then return {} end
if ARGV[3] ~= 'force' and in_grace() then return {} end
redis.call('SREM', WORKERS, name)
redis.call('SREM', node_workers_key(node), name)
redis.call('HDEL', worker_processes_key(node), name)
local ended = {}
for _, id in ipairs(redis.call('SMEMBERS', running_key(node))) do
  if redis.call('HGET', job_key(id), 'worker') == name then
    node_fail(id, 'worker ' .. name .. ' died while running the job')
    table.insert(ended, id)
  end
end
hand_back(node)
return ended
