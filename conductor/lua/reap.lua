-- Settle what a dead worker left behind. ARGV: worker name, node.
-- Its job ends NODE_FAIL (or is requeued once, if submitted so). Jobs placed on the node but not
-- yet claimed go back to PENDING while the node has more placed jobs than workers left.
-- Does nothing when the worker's record exists again (it re-registered).
-- Returns the ids of the jobs it ended or requeued.
local name, node = ARGV[1], ARGV[2]
if redis.call('EXISTS', worker_key(name)) == 1 then return {} end
redis.call('SREM', WORKERS, name)
redis.call('SREM', node_workers_key(node), name)
local ended = {}
local unclaimed = {}
for _, id in ipairs(redis.call('SMEMBERS', running_key(node))) do
  local worker = redis.call('HGET', job_key(id), 'worker')
  if worker == name then
    node_fail(id, 'worker ' .. name .. ' died while running the job')
    table.insert(ended, id)
  elseif worker == '' then
    table.insert(unclaimed, tonumber(id))
  end
end
table.sort(unclaimed, function(a, b) return a > b end)  -- the newest give way first
local surplus = redis.call('SCARD', running_key(node)) - redis.call('SCARD', node_workers_key(node))
for i = 1, math.min(surplus, #unclaimed) do
  local id = unclaimed[i]
  release(id)
  move_state(id, 'RUNNING', 'PENDING')
  redis.call('HSET', job_key(id), 'node', '', 'cpu_ids', '', 'started_at', '')
end
return ended
