-- Drop a request's claim if the attempt asking still holds it.
-- KEYS[1]: the claim key; KEYS[2]: where to keep it pending ("{ns}claim:pending:<token>");
-- KEYS[3]: the namespace's change count, moved by a rename (a rebuild's SCAN may miss a key
--   renamed under it; the moved count then stops the rebuild instead);
-- ARGV[1]: the attempt's token, which reserve.lua stored as the claim's value;
-- ARGV[2]: "1" when the attempt's record may still commit (its outcome is unknown): the claim
--   is then renamed, keeping its expiry, so that the terminal's retry may swipe again while
--   `counters rebuild` still waits for the record; "0" to delete it.
-- A claim another attempt holds (this one found it taken, or it expired and was taken since) stays.
-- Returns 1 if the claim was dropped, 0 if not.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '1' then
    redis.call('RENAME', KEYS[1], KEYS[2])
    redis.call('INCR', KEYS[3])
    return 1
  end
  return redis.call('DEL', KEYS[1])
end
return 0
