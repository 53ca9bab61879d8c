-- Revoke a mandate; the first revocation's time is kept.
-- KEYS[1] the mandate (a hash); ARGV[1] now (RFC 3339)
-- Returns the time it was revoked at, or '' when there is no such mandate.
if redis.call('EXISTS', KEYS[1]) == 0 then return '' end
redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1])
return redis.call('HGET', KEYS[1], 'revoked_at')
