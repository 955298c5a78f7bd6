-- Replace every counter of a namespace, atomically (used by `counters rebuild`).
-- KEYS[1]: a key in the namespace's hash slot, only there to route the script on
--          Redis Cluster; KEYS[2..]: the namespaced keys to write.
-- ARGV[1]: the SCAN pattern matching the whole namespace; ARGV[2..]: the values.
-- The old keys are found with SCAN inside the script: they all share the
-- namespace's hash tag, so they live in KEYS[1]'s slot on this node, and no
-- swipe can see the namespace half-deleted or half-written.
local cursor = '0'
local deleted = 0
repeat
  local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do
    deleted = deleted + redis.call('DEL', key)
  end
until cursor == '0'
for index = 2, #KEYS do
  redis.call('SET', KEYS[index], ARGV[index])
end
return deleted
