-- Add deltas (negative to give back) to counters, atomically, without checking limits.
-- KEYS: the namespaced counter keys, one per ARGV; then, optionally, a give-back hold
-- (hold.lua) to drop in the same step; then the namespace's change count ("{ns}changes")
-- last. ARGV[i]: the integer delta for KEYS[i]. The change count goes up by 1 (see reserve.lua).
-- A counter that comes back to 0 is deleted, so the namespace holds only live counters.
-- Returns -1, having changed nothing, if the hold was named but is gone (it expired: a rebuild
-- may since have counted the adjustment from the ledger, so giving back now would count it twice).
if #KEYS == #ARGV + 2 and redis.call('DEL', KEYS[#KEYS - 1]) == 0 then
  return -1
end
for index = 1, #ARGV do
  local value = redis.call('INCRBY', KEYS[index], ARGV[index])
  if value == 0 then
    redis.call('DEL', KEYS[index])
  end
end
redis.call('INCR', KEYS[#KEYS])
return #ARGV
