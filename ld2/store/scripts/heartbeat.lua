-- Extend a lease by its own length. 'stop' tells the worker to abandon the trial (solved,
-- cancelled, reissued).
-- KEYS: study hash, back, leases, trials
-- ARGV: trial id, worker id
local k = study_keys(KEYS, N_HEARTBEAT)
local tid = ARGV[1]
local f = redis.call('HMGET', k.s, 'status', 'timeout_ms')
if not f[1] or not is_active(f[1]) then
  return 'stop'
end
local rec = redis.call('HGET', k.trials, tid)
if not rec then
  return 'stop'
end
local t = parse_trial(rec)
if t.worker ~= ARGV[2] then
  return 'stop'
end
local now = now_ms()
if t.state == 'X' then
  -- expired but not yet reissued: the worker is alive after all, so it may keep the range
  local m = member_of(k.back, t.start, t.count, tid)
  if not m then
    return 'stop'
  end
  redis.call('ZREM', k.back, m)
  redis.call('HINCRBY', k.s, 'reserved', t.count)
  t.state = 'L'
  redis.call('HSET', k.trials, tid, trial_record(t))
end
redis.call('ZADD', k.leases, now + (t.lease or tonumber(f[2])), tid)
return 'ok'
