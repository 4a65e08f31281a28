-- A worker's steady state in one round trip: register a trial, then lease the next one of the
-- same study. Composed after the bodies of register.lua and reserve.lua (see redis.py).
-- KEYS: as register.lua. ARGV: register.lua's 9 arguments, then reserve.lua's 6.
-- Returns register's reply followed by reserve's (or by {'skipped', status}).
local reg_args = {}
for i = 1, 9 do
  reg_args[i] = ARGV[i]
end
local reply = register_body(KEYS, reg_args)
if reply[1] ~= 'ok' or reply[2] == 'done' then
  reply[3], reply[4] = 'skipped', reply[2]
  return reply
end
local nxt = reserve_body(KEYS, {ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15]})
for _, v in ipairs(nxt) do
  reply[#reply + 1] = v
end
return reply
