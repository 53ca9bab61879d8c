-- Reserve a refund's amount from a mandate's daily budget, once per job key.
-- KEYS[1]  the mandate (a hash)
-- KEYS[2]  the budget counter of the day (minor units spent)
-- KEYS[3]  the job key's reservation (a hash: state, day, amount, agent)
-- KEYS[4]  the mandate's floor: the newest version ever stored or spent under
-- ARGV[1]  the signature the caller verified (the mandate must not have changed since)
-- ARGV[2]  the day (YYYY-MM-DD, UTC)
-- ARGV[3]  the amount (minor units, integer)
-- ARGV[4]  the mandate's max_per_day (at most 2^53 - 1, so exact as a Lua number)
-- ARGV[5]  the agent
-- ARGV[6]  how long the day's counter is kept, in milliseconds
-- ARGV[7]  the version the caller verified
-- ARGV[8]  the least the day's counter can hold: what the caller has seen spent that day
-- ARGV[9]  how long the reservation is kept, in milliseconds (no longer than the job's
--          idempotency record: a key reused after its record expired reserves afresh)
-- Returns {'reserved', day, amount, spent} (new, or the job key's earlier reservation: a
--         retried job spends nothing more) | {'over', left} | {'revoked', at} | {'unknown'} |
--         {'changed'} (re-granted since the caller read it: read again) |
--         {'conflict', amount} (the key holds a reservation of another amount) |
--         {'rolled_back', floor} (the stored version is older than one already seen) |
--         {'tampered', spent, least} (the counter is lower than what was seen spent)
-- One script, so workers racing for the last of a budget are served one at a time.
local m = redis.call('HMGET', KEYS[1], 'signature', 'revoked_at')
if not m[1] then return {'unknown'} end
if m[1] ~= ARGV[1] then return {'changed'} end
if m[2] then return {'revoked', m[2]} end
local floor = tonumber(redis.call('GET', KEYS[4]) or '0')
local version = tonumber(ARGV[7])
if version < floor then return {'rolled_back', string.format('%.0f', floor)} end
if version > floor then redis.call('SET', KEYS[4], ARGV[7]) end

local spent = tonumber(redis.call('GET', KEYS[2]) or '0')
if spent < tonumber(ARGV[8]) then
  return {'tampered', string.format('%.0f', spent), ARGV[8]}
end

local r = redis.call('HMGET', KEYS[3], 'state', 'day', 'amount')
if r[1] == 'reserved' then
  if r[3] ~= ARGV[3] then return {'conflict', r[3]} end
  return {'reserved', r[2], r[3], string.format('%.0f', spent)}
end

local cap = tonumber(ARGV[4])
local amount = tonumber(ARGV[3])
local left = cap - spent
if left < 0 then left = 0 end
if amount > left then return {'over', string.format('%.0f', left)} end

local after = redis.call('INCRBY', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('HSET', KEYS[3], 'state', 'reserved', 'day', ARGV[2], 'amount', ARGV[3], 'agent', ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[9])
return {'reserved', ARGV[2], ARGV[3], string.format('%.0f', after)}
