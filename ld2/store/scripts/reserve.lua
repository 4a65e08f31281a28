-- Lease the next chunk of one study to a worker.
-- KEYS: study hash, back, leases, trials, failed
-- ARGV: study id, max_size, worker id, worker name, live workers (0: unknown),
--       lease ms (0 or absent: the study's trial timeout; a heartbeating worker asks for less),
-- With N live workers no trial takes more than the points left / 2N (but at least 16), so that
-- a worker whose trial size was set by a faster study cannot take the rest while others idle.
--       '1' when the lease is a prefetch (a worker's next trial, taken while it computes one):
--       refused with {'later', status} when the study has few points left waiting, so that a
--       worker holding two trials never leaves another idle at the end of a study
-- With a request id: KEYS[N_RESERVE + 1] is its reply key, ARGV[8] the reply's expiry (ms); a lease this
-- id already holds (leased to this worker, not expired) is answered again, with its current
-- deadline, instead of a second one. ARGV[9] 'replay': only that; else {'skipped', status}.
-- Returns {'ok', trial id, start, count, attempt, now, deadline, status} or {reason, status}.
local k = study_keys(KEYS, N_RESERVE)
local sid, max_size = ARGV[1], tonumber(ARGV[2])
local f = redis.call('HMGET', k.s, 'status', 'total', 'cursor', 'sizes', 'strides', 'jagged',
  'order', 'timeout_ms', 'max_attempts', 'done', 'failed', 'reserved')
local status = f[1]
if not status then
  return {'missing', ''}
end
local reply_key, reply_ttl = KEYS[N_RESERVE + 1], ARGV[8]
if reply_key then
  local old = recall(reply_key, 2)
  if old then
    local rec = redis.call('HGET', k.trials, old[2])
    local t = rec and parse_trial(rec)
    local deadline = tonumber(redis.call('ZSCORE', k.leases, old[2]) or '-1')
    if t and t.state == 'L' and t.worker == ARGV[3] and deadline > now_ms() then
      old[7] = fmt(deadline)
      return old
    end
  end
  if ARGV[9] == 'replay' then
    return {'skipped', status}
  end
end
if status ~= 'wait' and status ~= 'running' then
  return {'inactive', status}
end
local now = now_ms()
local total, cursor = tonumber(f[2]), tonumber(f[3])
local study = { sizes = numbers(f[4]), strides = numbers(f[5]), jagged = tonumber(f[6]) }
local timeout, max_attempts = tonumber(f[8]), tonumber(f[9])
local asked = tonumber(ARGV[6] or '0') or 0
if asked > 0 then
  timeout = asked
end
local limit_end = 9007199254740992 -- 2^53: no flat index beyond it is ever issued

local live = tonumber(ARGV[5] or '0') or 0
if live > 0 and total >= 0 then
  local left = total - tonumber(f[10]) - tonumber(f[11]) - tonumber(f[12])
  local cap = math.max(16, math.ceil(left / (2 * live))) -- below 16 points, halving buys nothing
  if cap < max_size then
    max_size = cap
  end
end

-- the counts read above, read again only when expired leases changed them
local done_n, failed_n, reserved_n = tonumber(f[10]), tonumber(f[11]), tonumber(f[12])
if reap_expired(k, now, max_attempts) > 0 then
  local f2 = redis.call('HMGET', k.s, 'done', 'failed', 'reserved')
  done_n, failed_n, reserved_n = tonumber(f2[1]), tonumber(f2[2]), tonumber(f2[3])
end
if total >= 0 and done_n + failed_n >= total and maybe_complete(k, now) then
  return {'inactive', 'done'}
end
if ARGV[7] == '1' and total >= 0 then
  -- a prefetch only while every trial in flight could still be followed by one of this size
  local waiting = total - done_n - failed_n - reserved_n
  if waiting < max_size * (redis.call('ZCARD', k.leases) + 2) then
    return {'later', status}
  end
end

local start, available, attempt = nil, 0, 0
local head = redis.call('ZRANGE', k.back, 0, 0)
if #head > 0 then
  -- handed-back work first, lowest range first
  local old_tid
  start, available, attempt, old_tid = parse_range(head[1])
  redis.call('ZREM', k.back, head[1])
  if old_tid ~= '-' then
    redis.call('HDEL', k.trials, old_tid) -- reissued: its late result can no longer be accepted
  end
elseif f[7] == 'random' then
  local r = redis.call('HMGET', k.s, 'r_n', 'r_axis', 'r_width', 'r_half', 'r_keys')
  local n_chunks = tonumber(r[1])
  if n_chunks == 0 then
    -- the first reserve fixes the chunk grid: sequential planning's tiles for this max_size
    local axis, width
    if study.jagged == 1 then
      axis, width = 0, max_size
      n_chunks = divmod(total + width - 1, width)
    else
      local first = aligned_count(study.sizes, study.strides, 0, max_size)
      for d = 1, #study.sizes do
        local q, rem = divmod(first, study.strides[d])
        if rem == 0 then
          axis, width = d, q
          break
        end
      end
      local size = study.sizes[axis]
      local per_row = divmod(size + width - 1, width)
      n_chunks = divmod(total, size * study.strides[axis]) * per_row
    end
    local bits = 2
    while 2 ^ bits < n_chunks do
      bits = bits + 1
    end
    bits = bits + bits % 2
    redis.call('HSET', k.s, 'r_n', fmt(n_chunks), 'r_axis', fmt(axis), 'r_width', fmt(width),
      'r_half', fmt(bits / 2))
    r = {n_chunks, axis, width, bits / 2, r[5]}
  end
  if cursor >= n_chunks then
    return {'empty', status}
  end
  local axis, width, half = tonumber(r[2]), tonumber(r[3]), tonumber(r[4])
  local keys = numbers(r[5])
  local modulus = 2 ^ half
  local function round(x, key)
    x = (x + key % modulus) % modulus
    x = (x * 63369013) % modulus -- 0x3C6EF35
    x = xor(x, (divmod(x, 2 ^ (divmod(half, 2) + 1))))
    x = (x * 41766581) % modulus -- 0x27D4EB5
    return xor(x, (divmod(x, 2 ^ divmod(half, 2))))
  end
  local function encrypt(x)
    local left, right = divmod(x, modulus)
    for i = 1, 4 do
      left, right = right, xor(left, round(right, keys[i]))
    end
    return left * modulus + right
  end
  local chunk = encrypt(cursor)
  while chunk >= n_chunks do
    chunk = encrypt(chunk)
  end
  redis.call('HINCRBY', k.s, 'cursor', 1)
  if axis == 0 then
    start = chunk * width
    available = math.min(width, total - start)
  else
    local size, stride = study.sizes[axis], study.strides[axis]
    local per_row = divmod(size + width - 1, width)
    local row, j = divmod(chunk, per_row)
    local first = j * width
    start = row * size * stride + first * stride
    available = math.min(width, size - first) * stride
  end
else
  local stop = limit_end
  if total >= 0 then
    stop = total
  end
  if cursor >= stop then
    return {'empty', status}
  end
  start, available = cursor, stop - cursor
end

local count = plan_count(study, start, math.min(available, max_size))
if count < available then
  if f[7] == 'random' or #head > 0 then
    redis.call('ZADD', k.back, start + count, range_member(start + count, available - count, attempt, '-'))
  end
end
if #head == 0 and f[7] ~= 'random' then
  redis.call('HSET', k.s, 'cursor', fmt(start + count))
end

local seq = redis.call('HINCRBY', k.s, 'tseq', 1) - 1
local tid = sid .. '-' .. string.format('0x%x', seq)
local deadline = now + timeout
redis.call('HSET', k.trials, tid, trial_record({
  start = start, count = count, attempt = attempt, reserved = now, state = 'L',
  worker = ARGV[3], name = ARGV[4], lease = timeout,
}))
redis.call('ZADD', k.leases, deadline, tid)
redis.call('HINCRBY', k.s, 'reserved', count)
if status == 'wait' then
  redis.call('HSET', k.s, 'status', 'running', 'started_ms', fmt(now))
  status = 'running'
end
return remember(reply_key, reply_ttl, 2,
  {'ok', tid, fmt(start), fmt(count), fmt(attempt), fmt(now), fmt(deadline), status})
