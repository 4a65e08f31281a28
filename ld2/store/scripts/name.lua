-- The study-name index (one hash, so one slot): claim, take over or release a name atomically.
-- A claim is "<study id>|<ms when claimed>": a claim whose study hash does not exist yet is a
-- registration in progress (fresh) or one that died half-way (stale); redis.py tells them apart.
-- KEYS: names hash. ARGV: action (claim | takeover | release), name, study id, claim seen.
-- Returns {'ok'} or {'held', current claim, now ms}.
local action, name, sid = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
local cur = redis.call('HGET', KEYS[1], name)
if action == 'release' then
  if cur and split(cur, '|')[1] == sid then
    redis.call('HDEL', KEYS[1], name)
  end
  return {'ok'}
end
if (action == 'claim' and not cur) or (action == 'takeover' and cur == ARGV[4]) then
  redis.call('HSET', KEYS[1], name, sid .. '|' .. fmt(now))
  return {'ok'}
end
return {'held', cur or '', fmt(now)}
