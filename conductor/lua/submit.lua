-- Store a new PENDING job. ARGV: field, value, ... (already validated). Returns the new id.
local id = redis.call('INCR', NEXT_JOB_ID)
redis.call('HSET', job_key(id), 'id', id, 'state', 'PENDING', 'submitted_at', now(), unpack(ARGV))
redis.call('ZADD', JOBS, id, id)
redis.call('ZADD', state_key('PENDING'), id, id)
pending_add(id)
return id
