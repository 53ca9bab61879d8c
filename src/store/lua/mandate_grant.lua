-- Store a signed mandate, replacing any mandate with the same id (and its revocation).
-- KEYS[1]  the mandate (a hash)
-- ARGV     field, value, field, value, ... (every field of the mandate, signature included)
-- Returns 'ok'. Repeating it stores the same thing again. The daily budget counters are
-- other keys: a new grant keeps what was spent under the old one.
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV))
return 'ok'
