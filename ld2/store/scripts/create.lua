-- Create a study's hash; nothing else is written. KEYS: study hash. ARGV: field, value, ...
-- Returns the registration time (ms), or 'exists'.
local k = study_keys(KEYS, N_CREATE)
if redis.call('EXISTS', k.s) == 1 then
  return 'exists'
end
local now = now_ms()
redis.call('HSET', k.s, 'registered_ms', fmt(now), unpack(ARGV))
return fmt(now)
