-- Give each counter that has no time to live the one it should have (`counters expire`;
-- reserve.lua creates counters without one, docs/design.md "Counters").
-- KEYS: counters of one namespace (one hash slot); ARGV[i]: KEYS[i]'s time to live in seconds, at least 1.
-- A counter that has a time to live keeps it; one that is gone (TTL -2) stays gone.
-- Returns how many counters were given one. Redis runs it ~2 µs a key, other clients waiting: the caller
-- sends EXPIRE_SCRIPT_KEYS at a time.
local timed = 0
for index, key in ipairs(KEYS) do
  if redis.call('TTL', key) == -1 then
    redis.call('EXPIRE', key, ARGV[index])
    timed = timed + 1
  end
end
return timed
