-- Give counters without a time to live theirs, and take them out of the untimed
-- set (where reserve.lua notes each counter it creates), atomically: a crash
-- half-way leaves each counter either timed and out of the set, or as it was.
-- KEYS[1]: the namespace's untimed set ("{ns}untimed"); KEYS[2..]: counters,
-- namespaced, taken from the set or found by a SCAN of the namespace. ARGV[i], for KEYS[i + 1]: how many seconds it lives on
-- (till its period is over), "0": for ever, or "closed": its period is over
-- (no swipe adds to it any more), so it is deleted.
-- A counter that has a time to live keeps it; one that is gone (given back to 0)
-- is only taken out of the set.
-- Returns {deleted, timed}.
local deleted, timed = 0, 0
for index = 2, #KEYS do
  local ttl = ARGV[index - 1]
  if ttl == 'closed' then
    deleted = deleted + redis.call('DEL', KEYS[index])
  elseif ttl ~= '0' and redis.call('TTL', KEYS[index]) == -1 then
    redis.call('EXPIRE', KEYS[index], ttl)
    timed = timed + 1
  end
end
redis.call('SREM', KEYS[1], unpack(KEYS, 2))
return {deleted, timed}
