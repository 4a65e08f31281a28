-- Helpers shared by every ld2 script (prepended to each one when it is loaded).
--
-- Lua numbers are doubles: every flat index handled here stays <= 2^53, where they are exact.
-- Numbers are printed with string.format('%d') (tostring would print 14 digits), and every
-- division goes through divmod, whose result is corrected to the exact integer quotient.

local function fmt(n)
  return string.format('%d', n)
end

local function divmod(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then
    q = q - 1
    r = r + b
  elseif r >= b then
    q = q + 1
    r = r - b
  end
  return q, r
end

-- Bitwise xor of two non-negative integers < 2^53 (plain arithmetic: not every engine has `bit`).
local function xor(a, b)
  local out, place = 0, 1
  while a > 0 or b > 0 do
    local ra, rb = a % 2, b % 2
    if ra ~= rb then
      out = out + place
    end
    a, b, place = (a - ra) / 2, (b - rb) / 2, place * 2
  end
  return out
end

local cached_now = nil -- one clock reading per script call (register + reserve share it)

local function now_ms()
  if cached_now == nil then
    local t = redis.call('TIME')
    cached_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return cached_now
end

local function split(s, sep)
  local out, from = {}, 1
  while true do
    local i = string.find(s, sep, from, true)
    if not i then
      out[#out + 1] = string.sub(s, from)
      return out
    end
    out[#out + 1] = string.sub(s, from, i - 1)
    from = i + #sep
  end
end

local function numbers(s)
  local out = {}
  for part in string.gmatch(s, '[^,]+') do
    out[#out + 1] = tonumber(part)
  end
  return out
end

-- The largest aligned box from `start` with at most `limit` points (sizes[1] < 0: infinite).
local function aligned_count(sizes, strides, start, limit)
  local count = 1
  for d = #sizes, 1, -1 do
    local stride, size = strides[d], sizes[d]
    local q = divmod(start, stride)
    local index, remaining = q, nil
    if size >= 0 then
      local _, r = divmod(q, size)
      index = r
      remaining = size - index
    end
    local whole = divmod(limit, stride)
    if remaining ~= nil and remaining <= whole then
      count = remaining * stride
      if index ~= 0 then
        return count
      end
    else
      return math.max(count, whole * stride)
    end
  end
  return count
end

local function plan_count(study, start, limit)
  if study.jagged == 1 then
    return limit
  end
  return aligned_count(study.sizes, study.strides, start, limit)
end

-- A handed-back or quarantined range: "start:count:attempts:trial id (or -)[:error]".
local function range_member(start, count, attempts, tid)
  return fmt(start) .. ':' .. fmt(count) .. ':' .. fmt(attempts) .. ':' .. tid
end

local function parse_range(member)
  local p = split(member, ':')
  return tonumber(p[1]), tonumber(p[2]), tonumber(p[3]), p[4]
end

-- A trial in flight: start, count, attempt, reserved ms, state (L leased, X expired), worker id,
-- name, and its lease length in ms (absent in records of older versions: the study's timeout).
local function parse_trial(rec)
  local p = split(rec, '\t')
  return {
    start = tonumber(p[1]), count = tonumber(p[2]), attempt = tonumber(p[3]),
    reserved = tonumber(p[4]), state = p[5], worker = p[6], name = p[7] or '',
    lease = tonumber(p[8] or ''),
  }
end

local function trial_record(t)
  local fields = {
    fmt(t.start), fmt(t.count), fmt(t.attempt), fmt(t.reserved), t.state, t.worker, t.name,
  }
  if t.lease then
    fields[8] = fmt(t.lease)
  end
  return table.concat(fields, '\t')
end

-- Find the member of zset `key` at score `start` that belongs to trial `tid`, if any.
local function member_of(key, start, count, tid)
  local found = redis.call('ZRANGEBYSCORE', key, start, start)
  for _, m in ipairs(found) do
    local s, n, _, t = parse_range(m)
    if s == start and n == count and t == tid then
      return m
    end
  end
  return nil
end

local function quarantine(k, start, count, attempts, tid, err)
  redis.call('ZADD', k.failed, start, range_member(start, count, attempts, tid) .. ':' .. err)
  redis.call('HINCRBY', k.s, 'failed', count)
end

-- Done when every point is registered or quarantined (finite spaces only).
local function maybe_complete(k, now)
  local f = redis.call('HMGET', k.s, 'total', 'done', 'failed', 'status')
  local total = tonumber(f[1])
  if f[4] == 'done' then
    return true
  end
  if total >= 0 and tonumber(f[2]) + tonumber(f[3]) >= total then
    redis.call('HSET', k.s, 'status', 'done', 'finished_ms', fmt(now))
    redis.call('DEL', k.leases, k.back)
    return true
  end
  return false
end

-- Hand back (or quarantine) every lease of this study whose deadline has passed; the study's
-- `expired` field counts them (ever, for metrics).
local function reap_expired(k, now, max_attempts)
  local expired = redis.call('ZRANGEBYSCORE', k.leases, '-inf', now)
  local handed = 0
  for _, tid in ipairs(expired) do
    redis.call('ZREM', k.leases, tid)
    local rec = redis.call('HGET', k.trials, tid)
    if rec then
      handed = handed + 1
      local t = parse_trial(rec)
      redis.call('HINCRBY', k.s, 'reserved', -t.count)
      local attempts = t.attempt + 1
      if attempts >= max_attempts then
        quarantine(k, t.start, t.count, attempts, tid, 'lease expired')
      else
        redis.call('ZADD', k.back, t.start, range_member(t.start, t.count, attempts, tid))
      end
      t.state = 'X'
      redis.call('HSET', k.trials, tid, trial_record(t))
    end
  end
  if handed > 0 then
    redis.call('HINCRBY', k.s, 'expired', handed)
  end
  return #expired
end

-- The first `n` of a study's keys by name (names and counts come from ld2/store/keys.py).
local function study_keys(keys, n)
  local k = {}
  for i = 1, n do
    k[STUDY_KEY_NAMES[i]] = keys[i]
  end
  return k
end

local function is_active(status)
  return status == 'wait' or status == 'running' or status == 'paused'
end

-- Replies remembered per request id (an ld2 client's Idempotency-Key), so that a retry whose
-- first reply was lost is answered as the first attempt was (see docs/store.md). One string per
-- study and id (`key`, tagged like the study's other keys) with an expiry (`ttl` ms):
-- "<register or fail reply>\n<reserve reply>", the fields of each tab-separated; either line
-- may be empty. `key` is nil for a request without an id: nothing is remembered then.
local function recall(key, line)
  if not key then
    return nil
  end
  local v = redis.call('GET', key)
  if not v then
    return nil
  end
  local text = split(v, '\n')[line]
  if text == nil or text == '' then
    return nil
  end
  return split(text, '\t')
end

local function remember(key, ttl, line, reply)
  if key then
    local lines = {'', ''}
    local v = redis.call('GET', key)
    if v then
      lines = split(v, '\n')
    end
    lines[line] = table.concat(reply, '\t')
    redis.call('SET', key, table.concat(lines, '\n'), 'PX', ttl)
  end
  return reply
end
