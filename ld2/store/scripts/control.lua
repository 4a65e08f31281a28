-- pause | resume | cancel | delete a study. Cancel deletes every key of an active study (as
-- lite_dist2 does); delete does the same for a study in any state (forgetting a finished one).
-- KEYS: the study's N_CONTROL keys (hash first). ARGV: action.
-- Returns {outcome, status before, done, failed}: ok | missing | inactive | unchanged
local k = study_keys(KEYS, N_CONTROL)
local f = redis.call('HMGET', k.s, 'status', 'done', 'failed')
local status = f[1]
if not status then
  return {'missing', ''}
end
local action = ARGV[1]
if action == 'delete' then
  redis.call('DEL', unpack(KEYS))
  return {'ok', status, f[2], f[3]}
end
if not is_active(status) then
  return {'inactive', status}
end
if action == 'cancel' then
  redis.call('DEL', unpack(KEYS))
elseif action == 'pause' then
  if status == 'paused' then
    return {'unchanged', status}
  end
  redis.call('HSET', k.s, 'status', 'paused', 'paused_from', status)
elseif action == 'resume' then
  if status ~= 'paused' then
    return {'unchanged', status}
  end
  redis.call('HSET', k.s, 'status', redis.call('HGET', k.s, 'paused_from'))
else
  return redis.error_reply('unknown action ' .. action)
end
return {'ok', status}
