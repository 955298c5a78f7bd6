-- Add deltas (negative to give back) to counters, atomically, without checking limits.
-- KEYS: namespaced counter keys; ARGV[i]: the integer delta for KEYS[i].
-- A counter that comes back to 0 is deleted, so the namespace holds only live counters.
for index = 1, #KEYS do
  local value = redis.call('INCRBY', KEYS[index], ARGV[index])
  if value == 0 then
    redis.call('DEL', KEYS[index])
  end
end
return #KEYS
