-- Settle what a dead worker left behind. ARGV: worker name, node.
-- Its job ends NODE_FAIL (or is requeued once, if submitted so); if the node has no worker left, jobs placed there but not yet started
-- go back to PENDING. Does nothing when the worker's record exists again (it re-registered).
-- Returns the ids of the jobs it ended or requeued.
local name, node = ARGV[1], ARGV[2]
if redis.call('EXISTS', worker_key(name)) == 1 then return {} end
redis.call('SREM', WORKERS, name)
redis.call('SREM', node_workers_key(node), name)
local ended = {}
local orphans = redis.call('SCARD', node_workers_key(node)) == 0
for _, id in ipairs(redis.call('SMEMBERS', running_key(node))) do
  local worker = redis.call('HGET', job_key(id), 'worker')
  if worker == name then
    node_fail(id, 'worker ' .. name .. ' died while running the job')
    table.insert(ended, id)
  elseif worker == '' and orphans then
    release(id)
    move_state(id, 'RUNNING', 'PENDING')
    redis.call('HSET', job_key(id), 'node', '', 'cpu_ids', '', 'started_at', '')
  end
end
return ended
