-- A worker records again the end of a job it ran, after Redis lost that write. ARGV: id, worker,
-- node, final state, exit code, reason, ended-at, then the job's fields as the worker received
-- them (field, value, ...), to re-create a job Redis lost altogether.
-- Returns 1 when recorded now, 0 when Redis already has it ended, -1 when another worker runs it.
local id, worker, node = ARGV[1], ARGV[2], ARGV[3]
local final, exit_code, reason, ended = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local j = redis.call('HMGET', job_key(id), 'state', 'worker')
if j[1] and j[1] ~= 'PENDING' and j[1] ~= 'RUNNING' then return 0 end
if j[1] == 'RUNNING' and j[2] and j[2] ~= '' and j[2] ~= worker then return -1 end
if not j[1] then
  for i = 8, #ARGV, 2 do redis.call('HSET', job_key(id), ARGV[i], ARGV[i + 1]) end
  redis.call('ZADD', JOBS, id, id)
  if tonumber(redis.call('GET', NEXT_JOB_ID) or 0) < tonumber(id) then redis.call('SET', NEXT_JOB_ID, id) end
end
if j[1] == 'RUNNING' then release(id) end
-- A job Redis lost altogether was re-created above from the worker's copy, which says RUNNING.
move_state(id, j[1] or 'RUNNING', final)
local fields = {}
for i = 8, #ARGV, 2 do fields[ARGV[i]] = ARGV[i + 1] end
redis.call('HSET', job_key(id), 'node', node, 'worker', worker, 'exit_code', exit_code,
  'reason', reason, 'ended_at', ended, 'cpu_ids', fields['cpu_ids'] or '',
  'started_at', fields['started_at'] or '')
redis.call('DEL', control_key(id))
return 1
