-- Write one batch of a rebuild too large for one script (used by `counters rebuild`).
-- KEYS[1]: the namespace's change count ("{ns}changes"); KEYS[2..]: namespaced counter keys.
-- ARGV[1], ARGV[2]: as in replace_all.lua (write only if the change count still reads ARGV[2]);
-- Then, for each of KEYS[2..] in turn, its value ("0" deletes the key: a counter the ledger no
-- longer has) and how many seconds it lives on (0: for ever).
-- Returns -1, having written nothing, if the change count moved; else how many keys it wrote.
if ARGV[1] == '1' and (redis.call('GET', KEYS[1]) or '') ~= ARGV[2] then
  return -1
end
for index = 2, #KEYS do
  if ARGV[2 * index - 1] == '0' then
    redis.call('DEL', KEYS[index])
  else
    redis.call('SET', KEYS[index], ARGV[2 * index - 1])
    if ARGV[2 * index] ~= '0' then
      redis.call('EXPIRE', KEYS[index], ARGV[2 * index])
    end
  end
end
return #KEYS - 1
