-- Extend the lease of a claim this attempt still holds.
-- KEYS[1] the record; ARGV[1] owner token; ARGV[2] lease in milliseconds
-- Returns 1 when extended, 0 when the claim is no longer this attempt's.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('HMGET', KEYS[1], 'state', 'owner')
if r[1] ~= 'claimed' or r[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', tostring(now + tonumber(ARGV[2])))
return 1
