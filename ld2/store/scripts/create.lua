-- Create a study's hash; nothing else is written. KEYS: study hash. ARGV: field, value, ...
-- Returns the registration time (ms), or 'exists'.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 'exists'
end
local now = now_ms()
redis.call('HSET', KEYS[1], 'registered_ms', fmt(now), unpack(ARGV))
return fmt(now)
