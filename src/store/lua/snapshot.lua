-- Record what the payment looked like before this attempt sends its refund.
-- KEYS[1] the record; ARGV[1] owner token; ARGV[2] the provider's snapshot
-- Returns 1 when stored, 0 when the claim is no longer this attempt's (it must not send).
local r = redis.call('HMGET', KEYS[1], 'state', 'owner')
if r[1] ~= 'claimed' or r[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'snapshot', ARGV[2])
return 1
