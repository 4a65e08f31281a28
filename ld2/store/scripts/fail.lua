-- Give a trial back: a runner failure (counts an attempt) or a worker shutting down (does not).
-- KEYS: study hash, back, leases, trials, failed
-- ARGV: trial id, worker id, error text, count the attempt (1/0)
-- Returns {outcome, status}: ok | unknown | wrong_worker | inactive | missing
local k = study_keys(KEYS)
local tid = ARGV[1]
local f = redis.call('HMGET', k.s, 'status', 'max_attempts')
local status = f[1]
if not status then
  return {'missing', ''}
end
if not is_active(status) then
  return {'inactive', status}
end
local rec = redis.call('HGET', k.trials, tid)
if not rec then
  return {'unknown', status}
end
local t = parse_trial(rec)
if t.worker ~= ARGV[2] then
  return {'wrong_worker', status}
end
local now = now_ms()
if t.state == 'X' then
  -- already handed back by the reaper; just forget the record
  redis.call('HDEL', k.trials, tid)
  return {'ok', status}
end
redis.call('ZREM', k.leases, tid)
redis.call('HINCRBY', k.s, 'reserved', -t.count)
redis.call('HDEL', k.trials, tid)
local attempts = t.attempt + tonumber(ARGV[4])
if attempts >= tonumber(f[2]) then
  quarantine(k, t.start, t.count, attempts, '-', ARGV[3])
  if maybe_complete(k, now) then
    return {'ok', 'done'}
  end
else
  redis.call('ZADD', k.back, t.start, range_member(t.start, t.count, attempts, '-'))
end
return {'ok', status}
