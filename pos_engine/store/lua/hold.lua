-- Before a refund or reversal commits in the ledger: note that it will give caps back here
-- just after (apply.lua drops the note in the same step), so that `counters rebuild` waits for
-- the give-back (the note is a claim key: "{ns}claim:hold:<token>") or, if the note comes after
-- the rebuild noted the change count, writes nothing.
-- KEYS[1]: the note; KEYS[2]: the namespace's change count; ARGV[1]: seconds the note lives.
redis.call('SET', KEYS[1], '1', 'EX', tonumber(ARGV[1]))
redis.call('INCR', KEYS[2])
return 1
