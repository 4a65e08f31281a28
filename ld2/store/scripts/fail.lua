-- Give a trial back. Modes:
--   release     a worker shutting down: the range goes back, no attempt counted
--   retry       a failure: counts an attempt; at max_attempts the range is quarantined
--   split       a runner failure: a range of several points goes back as two halves (each
--               retried, and split again if it fails), so that only the points that fail on
--               their own end up quarantined; a single point counts attempts as `retry`
--   quarantine  the range can never succeed (the runner cannot be called for this study)
-- KEYS: study hash, back, leases, trials, failed
-- ARGV: trial id, worker id, error text, mode
-- With a request id: KEYS[N_FAIL + 1] is its reply key, ARGV[5] the reply's expiry (ms); an id whose
-- trial was handed back gets that answer again (the repeat changes nothing).
-- Returns {outcome, status}: ok | unknown | wrong_worker | inactive | missing
local k = study_keys(KEYS, N_FAIL)
local tid, mode = ARGV[1], ARGV[4]
local reply_key, reply_ttl = KEYS[N_FAIL + 1], ARGV[5]
local old = recall(reply_key, 1)
if old then
  return old
end
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
  return remember(reply_key, reply_ttl, 1, {'ok', status})
end
redis.call('ZREM', k.leases, tid)
redis.call('HINCRBY', k.s, 'reserved', -t.count)
redis.call('HDEL', k.trials, tid)
local max_attempts = tonumber(f[2])
if mode == 'split' and t.count > 1 then
  local half = divmod(t.count, 2)
  redis.call('ZADD', k.back, t.start, range_member(t.start, half, 0, '-'))
  redis.call('ZADD', k.back, t.start + half, range_member(t.start + half, t.count - half, 0, '-'))
  return remember(reply_key, reply_ttl, 1, {'ok', status})
end
local attempts = t.attempt
if mode ~= 'release' then
  attempts = attempts + 1
end
if mode == 'quarantine' then
  attempts = math.max(attempts, max_attempts)
end
if attempts >= max_attempts then
  quarantine(k, t.start, t.count, attempts, '-', ARGV[3])
  if maybe_complete(k, now) then
    return remember(reply_key, reply_ttl, 1, {'ok', 'done'})
  end
else
  redis.call('ZADD', k.back, t.start, range_member(t.start, t.count, attempts, '-'))
end
return remember(reply_key, reply_ttl, 1, {'ok', status})
