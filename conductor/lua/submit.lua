-- Store a new PENDING job. ARGV: field, value, ... (already validated). Returns the new id.
local id = redis.call('INCR', NEXT_JOB_ID)
redis.call('HSET', job_key(id), 'id', id, 'state', 'PENDING', 'submitted_at', now(), unpack(ARGV))
redis.call('ZADD', JOBS, id, id)
redis.call('ZADD', state_key('PENDING'), id, id)
local j = redis.call('HMGET', job_key(id), 'account', 'name', 'dependency')
local active = active_name_key(j[1] or '', j[2] or '')
redis.call('ZADD', active, id, id)
if j[3] and j[3] ~= '' then
  -- Every job named (and, for singleton, every earlier job of the same account and name) tells
  -- this one when it starts or ends.
  for condition in string.gmatch(j[3], '[^,?]+') do
    if condition == 'singleton' then
      for _, other in ipairs(redis.call('ZRANGEBYSCORE', active, '-inf', '(' .. id)) do
        redis.call('SADD', dependents_key(other), id)
      end
    else
      local kind = string.match(condition, '^(%a+)')
      for parent in string.gmatch(string.sub(condition, #kind + 2), '[^:]+') do
        local state = redis.call('HGET', job_key(parent), 'state')
        if state == 'PENDING' or state == 'RUNNING' then redis.call('SADD', dependents_key(parent), id) end
      end
    end
  end
  redis.call('HSET', job_key(id), 'dependency_state', 'waiting', 'reason', 'Dependency')
  update_dependency(id)
end
pending_add(id)
return id
