-- Store a signed version of a mandate (a grant, a re-grant or a revocation), replacing the
-- version before it, only if that is still the one the signer read and the new version is
-- newer than any this mandate ever had.
-- KEYS[1]  the mandate (a hash)
-- KEYS[2]  the mandate's floor: the newest version ever stored or spent under
-- ARGV[1]  the signature of the version the signer read ('' when there was none)
-- ARGV[2]  the new version
-- ARGV[3…] field, value, field, value, ... (every field of the mandate, signature included)
-- Returns 'ok' | 'changed' (another version was stored since the read: read again) |
--         'stale' (the floor is at or past this version: a rollback is refused)
-- The daily budget counters are other keys: a new grant keeps what was spent under the old one.
local current = redis.call('HGET', KEYS[1], 'signature') or ''
if current ~= ARGV[1] then return 'changed' end
local floor = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) <= floor then return 'stale' end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SET', KEYS[2], ARGV[2])
return 'ok'
