-- Append consecutive sealed receipts to the chain, all or none, if the chain head is still
-- the one the first was sealed after; at most one receipt per idempotency key.
-- KEYS[1]  the chain (a hash: position → the receipt's exact text)
-- KEYS[2]  the head (a hash: seq, hash of the last receipt)
-- KEYS[3]  the index (a hash: idempotency key → position)
-- KEYS[4]  the spend tallies (a hash: '<mandate>|<day>' → minor units sealed)
-- ARGV[1]  the genesis hash (prev_hash of position 1)
-- ARGV[2]  the prev_hash of the first receipt (the head they were sealed after)
-- ARGV[3 + 6i .. 8 + 6i]  receipt i (from 0): its position, idempotency key, hash, text,
--          spend tally field ('' for a refund under no mandate) and amount; positions are
--          consecutive, each receipt chained to the one before it.
-- Returns {'appended'}
--       | {'exists', i, seq, text, ...} (receipt i, from 1, is already sealed for its key, at
--         seq: nothing appended; seal the others again without it)
--       | {'moved', seq, hash} (the head moved on: seal again after it)
--       | {'occupied', seq} (a position is taken although the head says otherwise: the head
--         was lost or rolled back; appending would fork the chain, so it refuses)
-- Repeating a call that succeeded answers 'exists', so a lost reply can simply be retried.
local n = (#ARGV - 2) / 6
local found = {'exists'}
for i = 0, n - 1 do
  local at = redis.call('HGET', KEYS[3], ARGV[4 + 6 * i])
  if at then
    found[#found + 1] = tostring(i + 1)
    found[#found + 1] = at
    found[#found + 1] = redis.call('HGET', KEYS[1], at) or ''
  end
end
if #found > 1 then
  return found
end

local head = redis.call('HMGET', KEYS[2], 'seq', 'hash')
local seq = head[1] or '0'
local hash = head[2] or ARGV[1]
if tonumber(seq) + 1 ~= tonumber(ARGV[3]) or hash ~= ARGV[2] then
  return {'moved', seq, hash}
end

for i = 0, n - 1 do
  if redis.call('HEXISTS', KEYS[1], ARGV[3 + 6 * i]) == 1 then
    return {'occupied', ARGV[3 + 6 * i]}
  end
end
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[3 + 6 * i], ARGV[6 + 6 * i])
  redis.call('HSET', KEYS[3], ARGV[4 + 6 * i], ARGV[3 + 6 * i])
  if ARGV[7 + 6 * i] ~= '' then
    redis.call('HINCRBY', KEYS[4], ARGV[7 + 6 * i], ARGV[8 + 6 * i])
  end
end
local last = 3 + 6 * (n - 1)
redis.call('HSET', KEYS[2], 'seq', ARGV[last], 'hash', ARGV[last + 2])
return {'appended'}
