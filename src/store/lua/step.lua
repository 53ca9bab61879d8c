-- Record (or clear) one finished step of a job this attempt still holds.
-- KEYS[1] the record; ARGV[1] owner token; ARGV[2] step name; ARGV[3] value ('' clears it)
-- Returns 1 when recorded, 0 when the claim is no longer this attempt's.
local r = redis.call('HMGET', KEYS[1], 'state', 'owner')
if r[1] ~= 'claimed' or r[2] ~= ARGV[1] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], 'step:' .. ARGV[2])
else
  redis.call('HSET', KEYS[1], 'step:' .. ARGV[2], ARGV[3])
end
return 1
