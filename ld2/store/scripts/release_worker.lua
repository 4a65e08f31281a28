-- Hand back every trial of this study that one worker holds: the worker is known to be gone
-- (the local run that started it was killed), so its leases need not run out first. As
-- fail.lua's release: the ranges go back as they are, no attempt counted.
-- KEYS: study hash, back, leases, trials
-- ARGV: worker id
-- Returns {number handed back, status}
local k = study_keys(KEYS, N_RELEASE_WORKER)
local worker = ARGV[1]
local status = redis.call('HGET', k.s, 'status')
if not status then
  return {0, ''}
end
if not is_active(status) then
  return {0, status}
end
local n = 0
local all = redis.call('HGETALL', k.trials)
for i = 1, #all, 2 do
  local tid = all[i]
  local t = parse_trial(all[i + 1])
  -- an expired trial (X) is already back (or quarantined): its record stays for a late result
  if t.worker == worker and t.state == 'L' then
    redis.call('ZREM', k.leases, tid)
    redis.call('HINCRBY', k.s, 'reserved', -t.count)
    redis.call('HDEL', k.trials, tid)
    redis.call('ZADD', k.back, t.start, range_member(t.start, t.count, t.attempt, '-'))
    n = n + 1
  end
end
return {n, status}
