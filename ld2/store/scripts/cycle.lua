-- A worker's steady state in one round trip: register a trial, then lease the next one of the
-- same study. Composed after the bodies of register.lua and reserve.lua (see redis.py).
-- KEYS: as register.lua (with a request id, KEYS[N_CYCLE + 1] its reply key). ARGV: register.lua's 9
-- arguments, then reserve.lua's 7, then (with a request id) the reply's expiry in ms.
-- Returns register's reply followed by reserve's (or by {'skipped', status}).
-- A retry (the id's registration is remembered here) only replays a lease the id holds in this
-- study: with none here, its first attempt may have leased in another study, where the caller
-- looks next (RedisTable.reserve), so 'skipped' rather than a second lease.
local reply_key = KEYS[N_CYCLE + 1]
local again = recall(reply_key, 1) ~= nil
local reg_args = {}
for i = 1, 9 do
  reg_args[i] = ARGV[i]
end
reg_args[10] = ARGV[17]
local reply = register_body(KEYS, reg_args)
if reply[1] ~= 'ok' or reply[2] == 'done' then
  reply[3], reply[4] = 'skipped', reply[2]
  return reply
end
local res_keys = {}
for i = 1, N_RESERVE do
  res_keys[i] = KEYS[i]
end
res_keys[N_RESERVE + 1] = reply_key
local replay = ''
if again then
  replay = 'replay'
end
local nxt = reserve_body(res_keys,
  {ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16], ARGV[17], replay})
for _, v in ipairs(nxt) do
  reply[#reply + 1] = v
end
return reply
