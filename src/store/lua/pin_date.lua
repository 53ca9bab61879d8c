-- Pin the day a dateless job is keyed under to the day it was first seen.
-- KEYS[1] the job's date key; ARGV[1] today (YYYY-MM-DD); ARGV[2] TTL in milliseconds
-- Returns the pinned day: today on first sight, the first day on every later delivery.
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
return redis.call('GET', KEYS[1])
