-- Put a study's quarantined ranges back to work (after the runner was fixed).
-- A finished study becomes active again, unless find_exact already found its answer.
-- KEYS: study hash, back, leases, trials, failed
-- Returns {outcome, points requeued, status}: ok | missing | solved
local k = study_keys(KEYS, N_RETRY)
local f = redis.call('HMGET', k.s, 'status', 'hit_flat', 'started_ms')
local status = f[1]
if not status then
  return {'missing', '0', ''}
end
if f[2] then
  return {'solved', '0', status}
end
local members = redis.call('ZRANGE', k.failed, 0, -1)
local points = 0
for _, m in ipairs(members) do
  local start, count = parse_range(m)
  redis.call('ZADD', k.back, start, range_member(start, count, 0, '-'))
  points = points + count
end
if points == 0 then
  return {'ok', '0', status}
end
redis.call('DEL', k.failed)
redis.call('HINCRBY', k.s, 'failed', -points)
if status == 'done' then
  local again = 'running'
  if not f[3] then
    again = 'wait'
  end
  redis.call('HSET', k.s, 'status', again)
  redis.call('HDEL', k.s, 'finished_ms')
  status = again
end
return {'ok', fmt(points), status}
