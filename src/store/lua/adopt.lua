-- Adopt a record written before records carried a hash tag (`<ns>:idem:<key>`).
-- KEYS[1]  the record, in the current layout (`<ns>:idem:{<key>}`)
-- ARGV[1]  the old record's remaining TTL in milliseconds (PTTL: -1 none, -2 gone)
-- ARGV[2…] the old record's fields and values (HGETALL)
-- Returns 1 when adopted, 0 when a record already exists under the current key (it wins:
-- it is at least as recent, since nothing writes the old key once the upgrade is done).
-- Repeating it changes nothing. The caller deletes the old key afterwards.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
