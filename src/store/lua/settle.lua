-- Move a claimed record to its next state after an attempt.
-- KEYS[1]  the record
-- ARGV[1]  owner token of the attempt
-- ARGV[2]  new state: done | pending | released | failed
-- ARGV[3]  result (JSON of the provider's refund) or '' to keep the stored one
-- ARGV[4]  uncertain: '1' when the attempt may have reached the provider unrecorded
-- ARGV[5]  reason (failed) or ''
-- ARGV[6]  record TTL in milliseconds
-- Returns 'ok', 'already' (the record is done: nothing changes) or 'lost' (another attempt
-- took the claim over; it will reach its own answer, so this one changes nothing).
-- 'done' is written whoever holds the claim: the provider has confirmed the refund, and
-- recording that truth can only prevent a second one.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('HMGET', KEYS[1], 'state', 'owner')
if r[1] == 'done' then return 'already' end
if ARGV[2] ~= 'done' and r[2] ~= ARGV[1] then return 'lost' end

redis.call('HSET', KEYS[1], 'state', ARGV[2], 'uncertain', ARGV[4], 'updated_at', tostring(now))
-- A stored result always means a refund exists at the provider (pending or done); a record
-- released or failed without one keeps none, so a later claim never mistakes it for pending.
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'result', ARGV[3])
elseif ARGV[2] == 'released' or ARGV[2] == 'failed' then
  redis.call('HDEL', KEYS[1], 'result')
end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'reason', ARGV[5]) end
-- A job that failed for good starts over if replayed: its steps (verification, mandate
-- reservation, released by the caller) no longer hold.
if ARGV[2] == 'failed' then
  -- Which attempt failed it: only that attempt may give its mandate reservation back (a
  -- takeover's own refund may be moving under the same reservation).
  redis.call('HSET', KEYS[1], 'failed_by', ARGV[1])
  local fields = redis.call('HKEYS', KEYS[1])
  for _, field in ipairs(fields) do
    if string.sub(field, 1, 5) == 'step:' then redis.call('HDEL', KEYS[1], field) end
  end
end
redis.call('HDEL', KEYS[1], 'owner', 'lease_until')
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 'ok'
