-- pause | resume | cancel a study. Cancel deletes every key of the study (as lite_dist2 does).
-- KEYS: the study's keys (hash first). ARGV: action.
-- Returns {outcome, status before}: ok | missing | inactive | unchanged
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return {'missing', ''}
end
local action = ARGV[1]
if not is_active(status) then
  return {'inactive', status}
end
if action == 'cancel' then
  redis.call('DEL', unpack(KEYS))
elseif action == 'pause' then
  if status == 'paused' then
    return {'unchanged', status}
  end
  redis.call('HSET', KEYS[1], 'status', 'paused', 'paused_from', status)
elseif action == 'resume' then
  if status ~= 'paused' then
    return {'unchanged', status}
  end
  redis.call('HSET', KEYS[1], 'status', redis.call('HGET', KEYS[1], 'paused_from'))
else
  return redis.error_reply('unknown action ' .. action)
end
return {'ok', status}
