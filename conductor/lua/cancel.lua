-- Cancel a job. ARGV: id, reason. Returns {'cancelled'} when it ended here, {'signalled'} when
-- its worker was told to stop it, or {'final', state} when it had already ended.
local id = ARGV[1]
local j = redis.call('HMGET', job_key(id), 'state', 'worker')
if not j[1] then return {'missing'} end
if j[1] == 'PENDING' or (j[1] == 'RUNNING' and j[2] == '') then
  settle(id, 'CANCELLED', '', ARGV[2])
  return {'cancelled'}
end
if j[1] == 'RUNNING' then
  redis.call('HSET', job_key(id), 'cancel_reason', ARGV[2])
  redis.call('RPUSH', control_key(id), 'cancel')
  return {'signalled'}
end
return {'final', j[1]}
