-- Replace every counter of a namespace, atomically (used by `counters rebuild`).
-- KEYS[1]: the namespace's change count ("{ns}changes"; it also routes the script
--          to the namespace's hash slot on Redis Cluster); KEYS[2..]: the namespaced keys to write.
-- ARGV[1]: "1" to write only if the change count still reads ARGV[2] ("" when it
--          was never set), "0" to write whatever it reads;
-- ARGV[3]: the SCAN pattern matching the whole namespace; then, for each of KEYS[2..] in turn,
-- its value and how many seconds it lives on (0: for ever).
-- Returns -1, having written nothing, if the change count moved (a swipe reserved
-- or gave back since the rebuild read the ledger); else how many keys it deleted.
-- The old keys are found with SCAN inside the script: they all share the
-- namespace's hash tag, so they live in KEYS[1]'s slot on this node, and no
-- swipe can see the namespace half-deleted or half-written.
if ARGV[1] == '1' and (redis.call('GET', KEYS[1]) or '') ~= ARGV[2] then
  return -1
end
local cursor = '0'
local deleted = 0
repeat
  local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[3], 'COUNT', 1000)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do
    deleted = deleted + redis.call('DEL', key)
  end
until cursor == '0'
for index = 2, #KEYS do
  redis.call('SET', KEYS[index], ARGV[2 * index])
  if ARGV[2 * index + 1] ~= '0' then
    redis.call('EXPIRE', KEYS[index], ARGV[2 * index + 1])
  end
end
return deleted
