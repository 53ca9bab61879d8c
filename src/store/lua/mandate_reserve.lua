-- Reserve a refund's amount from a mandate's daily budget, once per job key.
-- KEYS[1]  the mandate (a hash)
-- KEYS[2]  the budget counter of the day (minor units spent)
-- KEYS[3]  the job key's reservation (a hash: state, day, amount, agent)
-- ARGV[1]  the signature the caller verified (the mandate must not have changed since)
-- ARGV[2]  the day (YYYY-MM-DD, UTC)
-- ARGV[3]  the amount (minor units, integer)
-- ARGV[4]  the mandate's max_per_day (at most 2^53 - 1, so exact as a Lua number)
-- ARGV[5]  the agent
-- ARGV[6]  how long counters and reservations are kept, in milliseconds
-- Returns {'reserved', day, amount} (new, or the job key's earlier reservation: a retried job
--         spends nothing more) | {'over', left} | {'revoked', at} | {'unknown'} |
--         {'changed'} (re-granted since the caller read it: read again) |
--         {'conflict', amount} (the key holds a reservation of another amount)
-- One script, so workers racing for the last of a budget are served one at a time.
local m = redis.call('HMGET', KEYS[1], 'signature', 'revoked_at')
if not m[1] then return {'unknown'} end
if m[1] ~= ARGV[1] then return {'changed'} end
if m[2] then return {'revoked', m[2]} end

local r = redis.call('HMGET', KEYS[3], 'state', 'day', 'amount')
if r[1] == 'reserved' then
  if r[3] ~= ARGV[3] then return {'conflict', r[3]} end
  return {'reserved', r[2], r[3]}
end

local cap = tonumber(ARGV[4])
local spent = tonumber(redis.call('GET', KEYS[2]) or '0')
local amount = tonumber(ARGV[3])
local left = cap - spent
if left < 0 then left = 0 end
if amount > left then return {'over', string.format('%.0f', left)} end

redis.call('INCRBY', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('HSET', KEYS[3], 'state', 'reserved', 'day', ARGV[2], 'amount', ARGV[3], 'agent', ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return {'reserved', ARGV[2], ARGV[3]}
