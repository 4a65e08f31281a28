-- Register a trial's results, exactly once.
-- KEYS: study hash, back, leases, trials, failed, results, done index, events, best
-- ARGV: trial id, worker id, start, count, packed results, hit offset (-1: none),
--       best key ('' : none), best offset, vector length (0: scalar)
-- With a request id: KEYS[N_REGISTER + 1] is its reply key, ARGV[10] the reply's expiry (ms); an id whose
-- registration went through (ok or ignored) gets that answer again, before anything is checked.
-- Returns {outcome, status}: ok | ignored | missing | inactive | duplicate | unknown |
--   wrong_worker | mismatch | vector_length | reissued
local k = study_keys(KEYS, N_REGISTER)
local tid, worker = ARGV[1], ARGV[2]
local reply_key, reply_ttl = KEYS[N_REGISTER + 1], ARGV[10]
local old = recall(reply_key, 1)
if old then
  return old
end
local start, count = tonumber(ARGV[3]), tonumber(ARGV[4])
local f = redis.call('HMGET', k.s, 'status', 'strategy', 'vlen', 'total', 'done', 'failed')
local status = f[1]
if not status then
  return {'missing', ''}
end
if status == 'done' then
  if f[2] == 'find_exact' then
    -- solved elsewhere: answered without error, and ignored
    return remember(reply_key, reply_ttl, 1, {'ignored', status})
  end
  return {'inactive', status}
end
local rec = redis.call('HGET', k.trials, tid)
if not rec then
  if redis.call('HEXISTS', k.res, tid) == 1 then
    return {'duplicate', status}
  end
  return {'unknown', status}
end
local t = parse_trial(rec)
if t.worker ~= worker then
  return {'wrong_worker', status}
end
if t.start ~= start or t.count ~= count then
  return {'mismatch', status}
end
local vlen = tonumber(ARGV[9])
if vlen > 0 then
  local known = tonumber(f[3])
  if known > 0 and known ~= vlen then
    return {'vector_length', status}
  end
end
local now = now_ms()
local back_m, failed_m = nil, nil
if t.state ~= 'L' then
  -- expired: salvage the late result while its range still waits, untouched, to be reissued
  back_m = member_of(k.back, start, count, tid)
  if not back_m then
    local found = redis.call('ZRANGEBYSCORE', k.failed, start, start)
    for _, q in ipairs(found) do
      local s, n, _, qt = parse_range(q)
      if s == start and n == count and qt == tid then
        failed_m = q
      end
    end
    if not failed_m then
      return {'reissued', status}
    end
  end
end
-- The first write is the results themselves (HSET is refused when Redis is out of memory, and
-- Redis checks memory at a script's first write): a full noeviction Redis refuses the whole
-- call, which the worker reports as "Redis is full" and retries, instead of writing past it.
redis.call('HSET', k.res, tid, ARGV[5])
if t.state == 'L' then
  redis.call('ZREM', k.leases, tid)
  redis.call('HINCRBY', k.s, 'reserved', -count)
elseif back_m then
  redis.call('ZREM', k.back, back_m)
else
  redis.call('ZREM', k.failed, failed_m)
  redis.call('HINCRBY', k.s, 'failed', -count)
end
if vlen > 0 then
  redis.call('HSET', k.s, 'vlen', fmt(vlen))
end
redis.call('HDEL', k.trials, tid)
redis.call('ZADD', k.done, start, tid)
redis.call('HINCRBY', k.s, 'done', count)
redis.call('XADD', k.events, 'MAXLEN', '~', '10000', '*', 'w', worker, 'wn', t.name, 'n', fmt(count),
  't', tid, 's', fmt(start))

local hit = tonumber(ARGV[6])
if f[2] == 'find_exact' and hit >= 0 then
  redis.call('HSET', k.s, 'status', 'done', 'finished_ms', fmt(now), 'hit_flat', fmt(start + hit),
    'hit_trial', tid)
  redis.call('DEL', k.leases, k.back, k.trials)
  return remember(reply_key, reply_ttl, 1, {'ok', 'done'})
end
if ARGV[7] ~= '' then
  -- minimize: keys compare bytewise like (value, flat index); keep only the lowest
  redis.call('ZADD', k.best, 0, ARGV[7])
  local best = redis.call('ZRANGE', k.best, 0, 0)
  redis.call('ZREMRANGEBYRANK', k.best, 1, -1)
  if best[1] == ARGV[7] then
    redis.call('HSET', k.s, 'best_flat', fmt(start + tonumber(ARGV[8])), 'best_trial', tid)
  end
end
-- every point registered or quarantined: done (the counts read above, as just updated; only
-- then does maybe_complete read them again and write)
local total, settled = tonumber(f[4]), tonumber(f[5]) + count + tonumber(f[6])
if failed_m then
  settled = settled - count
end
if total >= 0 and settled >= total and maybe_complete(k, now) then
  return remember(reply_key, reply_ttl, 1, {'ok', 'done'})
end
return remember(reply_key, reply_ttl, 1, {'ok', status})
