-- Add deltas (negative to give back) to counters, atomically, without checking limits.
-- KEYS: the namespaced counter keys, n of them; then, optionally, a give-back hold
-- (hold.lua) to drop in the same step; then the namespace's change count ("{ns}changes")
-- last. ARGV[i], i <= n: the integer delta for KEYS[i]; ARGV[n + i]: how many seconds KEYS[i]
-- lives on (till its period is over), or 0: for ever. The change count goes up by 1 (see reserve.lua).
-- A counter that comes back to 0 is deleted, so the namespace holds only live counters; one
-- without a time to live (a swipe's reservation creates them without, and so did releases
-- before 2026-12-06) gets it, and one whose period is long over (1 s) is gone at once.
-- Returns -1, having changed nothing, if the hold was named but is gone (it expired: a rebuild
-- may since have counted the adjustment from the ledger, so giving back now would count it twice).
local n = #ARGV / 2
if #KEYS == n + 2 and redis.call('DEL', KEYS[#KEYS - 1]) == 0 then
  return -1
end
for index = 1, n do
  local value = redis.call('INCRBY', KEYS[index], ARGV[index])
  if value == 0 then
    redis.call('DEL', KEYS[index])
  elseif ARGV[n + index] ~= '0' and redis.call('TTL', KEYS[index]) == -1 then
    redis.call('EXPIRE', KEYS[index], ARGV[n + index])
  end
end
redis.call('INCR', KEYS[#KEYS])
return n
