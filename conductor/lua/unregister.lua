-- A worker leaves its slot (clean exit, or a stop requested: then before it places anything).
-- ARGV: worker name, node. Removes its record and slot and, in the same step, hands back to
-- PENDING the jobs placed on the node that no remaining slot can claim, so no job waits for good
-- on a node whose workers are gone. Returns how many jobs went back.
local name, node = ARGV[1], ARGV[2]
redis.call('DEL', worker_key(name))
redis.call('SREM', WORKERS, name)
redis.call('SREM', node_workers_key(node), name)
redis.call('HDEL', worker_processes_key(node), name)
return hand_back(node)
