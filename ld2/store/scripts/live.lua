-- How many workers hold a lease of this study that has not expired (read only).
-- KEYS: study hash, back, leases, trials. Returns the count.
local k = study_keys(KEYS, N_LIVE)
local tids = redis.call('ZRANGEBYSCORE', k.leases, '(' .. fmt(now_ms()), '+inf')
local seen, n = {}, 0
for _, tid in ipairs(tids) do
  local rec = redis.call('HGET', k.trials, tid)
  if rec then
    local w = parse_trial(rec).worker
    if not seen[w] then
      seen[w] = true
      n = n + 1
    end
  end
end
return n
