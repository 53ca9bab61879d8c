-- Append one sealed receipt to the chain, if the chain head is still the one it was sealed
-- after; at most one receipt per idempotency key.
-- KEYS[1]  the chain (a hash: position → the receipt's exact text)
-- KEYS[2]  the head (a hash: seq, hash of the last receipt)
-- KEYS[3]  the index (a hash: idempotency key → position)
-- ARGV[1]  position of the new receipt
-- ARGV[2]  its prev_hash (the head it was sealed after)
-- ARGV[3]  its hash
-- ARGV[4]  its idempotency key
-- ARGV[5]  its text
-- ARGV[6]  the genesis hash (prev_hash of position 1)
-- Returns {'appended'} | {'exists', seq, text} (already sealed for this key: nothing appended)
--       | {'moved', seq, hash} (the head moved on: seal again after it)
--       | {'occupied', seq} (the position is taken although the head says otherwise: the head
--         was lost or rolled back; appending would fork the chain, so it refuses)
-- Repeating a call that succeeded answers 'exists', so a lost reply can simply be retried.
local existing = redis.call('HGET', KEYS[3], ARGV[4])
if existing then
  return {'exists', existing, redis.call('HGET', KEYS[1], existing) or ''}
end

local head = redis.call('HMGET', KEYS[2], 'seq', 'hash')
local seq = head[1] or '0'
local hash = head[2] or ARGV[6]
if tonumber(seq) + 1 ~= tonumber(ARGV[1]) or hash ~= ARGV[2] then
  return {'moved', seq, hash}
end

if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[5]) == 0 then
  return {'occupied', ARGV[1]}
end
redis.call('HSET', KEYS[3], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[2], 'seq', ARGV[1], 'hash', ARGV[3])
return {'appended'}
