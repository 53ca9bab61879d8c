-- Give a reservation back to its day's budget (the refund failed for good).
-- KEYS[1]  the budget counter of the reservation's day
-- KEYS[2]  the job key's reservation (a hash: state, day, amount, agent)
-- ARGV[1]  the reservation's day; ARGV[2] its amount
-- Returns 1 when given back, 0 when there was nothing to give back (already released, never
-- reserved, or expired), -1 when the job key holds a different reservation (left alone).
-- Releasing twice gives back once: the record says it was released.
local r = redis.call('HMGET', KEYS[2], 'state', 'day', 'amount')
if r[1] ~= 'reserved' then return 0 end
if r[2] ~= ARGV[1] or r[3] ~= ARGV[2] then return -1 end
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local give = tonumber(ARGV[2])
if give > spent then give = spent end
if give > 0 then redis.call('DECRBY', KEYS[1], string.format('%.0f', give)) end
redis.call('HSET', KEYS[2], 'state', 'released')
return 1
