-- Hand back the expired leases of one study. Safe to run from any number of reapers.
-- KEYS: study hash, back, leases, trials, failed
-- Returns {number reaped, status}
local k = study_keys(KEYS, N_REAP)
local f = redis.call('HMGET', k.s, 'status', 'max_attempts')
if not f[1] then
  return {0, ''}
end
if not is_active(f[1]) then
  return {0, f[1]}
end
local now = now_ms()
local n = reap_expired(k, now, tonumber(f[2]))
if maybe_complete(k, now) then
  return {n, 'done'}
end
return {n, f[1]}
