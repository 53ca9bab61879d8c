-- Claim an idempotency record for one attempt of a job.
-- KEYS[1]  the record (a hash)
-- ARGV[1]  owner token of this attempt
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  fingerprint of the refund (provider|payment|amount|currency|req:digest of reason
--          and description), recorded
-- ARGV[4]  record TTL in milliseconds
-- ARGV[5]  job id
-- ARGV[6]  the same job's fingerprint as workers before the request digest recorded it
-- Returns {'claimed', uncertain, result, snapshot, takeovers, step1, value1, step2, ...}
--         (a result means a pending refund to sync; a snapshot is the payment as the provider
--         showed it before an earlier send; takeovers counts claims taken from workers that
--         died holding them; then the job's finished steps, so a retry resumes after them) | {'done', result} |
--         {'busy', ms_left} | {'conflict', fingerprint}
-- Time comes from the Redis server, so workers' clocks never disagree about a lease.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('HMGET', KEYS[1], 'state', 'owner', 'lease_until', 'fp', 'uncertain', 'result', 'snapshot')
local state, owner, lease_until, fp, uncertain, result, snapshot = r[1], r[2], tonumber(r[3]), r[4], r[5], r[6], r[7]

local other = fp and fp ~= ARGV[3] and fp ~= ARGV[6]
if state == 'done' then
  if other then return {'conflict', fp} end
  return {'done', result or ''}
end
if state and state ~= 'failed' and other then
  return {'conflict', fp}
end
if state == 'claimed' and owner ~= ARGV[1] then
  if lease_until and lease_until > now then
    return {'busy', tostring(lease_until - now)}
  end
  -- The previous owner died holding the claim: it may have reached the provider.
  uncertain = '1'
  redis.call('HINCRBY', KEYS[1], 'takeovers', 1)
end

redis.call('HSET', KEYS[1], 'state', 'claimed', 'owner', ARGV[1],
  'lease_until', tostring(now + tonumber(ARGV[2])), 'fp', ARGV[3],
  'uncertain', uncertain or '0', 'job_id', ARGV[5])
if owner ~= ARGV[1] then redis.call('HINCRBY', KEYS[1], 'claims', 1) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local reply = {'claimed', uncertain or '0', result or '', snapshot or '',
  redis.call('HGET', KEYS[1], 'takeovers') or '0'}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 5) == 'step:' then
    reply[#reply + 1] = string.sub(fields[i], 6)
    reply[#reply + 1] = fields[i + 1]
  end
end
return reply
