-- Drop a request's claim if the attempt asking still holds it.
-- KEYS[1]: the claim key; ARGV[1]: the attempt's token, which reserve.lua stored as the claim's value.
-- A claim another attempt holds (this one found it taken, or it expired and was taken since) stays.
-- Returns 1 if the claim was dropped, 0 if not.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
