-- Reserve the caps and budgets of one swipe, atomically: the Lua mirror of
-- pos_engine.domain.evaluation.execute_plan (keep the two in step; a property
-- test in tests/integration/test_redis_counters.py holds them together).
--
-- KEYS: the plan's distinct counter keys, already namespaced ("{ns}:key"),
--   then, if ARGV[3] > 0, the request's claim key, then the namespace's set of
--   counters created without a time to live ("{ns}untimed": `counters expire`
--   gives them one), then the namespace's change count ("{ns}changes"), last: a
--   reservation that takes anything adds 1 to it, so that `counters rebuild` can
--   tell that counters changed while it ran.
-- ARGV[1] = amount_fen, ARGV[2] = number of steps,
-- ARGV[3] = claim TTL in seconds (0: no claim); a claimed request reserves
--   nothing and the script returns {-1}: the same request was seen already,
--   so its answer is (or soon will be) in the ledger.
-- ARGV[4] = the attempt's claim token, stored as the claim's value (unclaim.lua
--   drops a claim only for the attempt that holds it); "" when there is no
--   claim. Then for each step:
--   kind      a small integer naming the benefit kind (discount, subsidy)
--   exclusive 1 or 0
--   bp        percent in basis points, or -1 for a fixed benefit
--   amount    percent benefit: amount_fen_max, or -1 for none; fixed benefit: fixed_fen
--   n         how many counters the step is subject to, followed by n triples:
--             key index (into KEYS), unit (f = fen, u = uses), limit
-- Returns three integers per step: given_fen, wanted_fen, stop, where stop is
--   0 (not stopped), k > 0 (stopped by the step's k-th counter) or
--   -j (stopped by the exclusive rule of step j).
--
-- Lua numbers are doubles: every integer here stays below 2^53 because the
-- caller bounds amounts and limits to 10^12 fen (see redis_counters.py).

local BP_PER_WHOLE = 10000

-- Round down: a funder never pays more than the rule says. amount * bp can
-- pass 2^53 (10^12 * 10^4), so split amount into whole units of 10000 and a
-- rest; math.fmod is exact on doubles, and rest * bp < 10^8 divides safely.
local function percent_of(amount, bp)
  local rest = math.fmod(amount, BP_PER_WHOLE)
  local whole = (amount - rest) / BP_PER_WHOLE
  return whole * bp + math.floor(rest * bp / BP_PER_WHOLE)
end

-- Current values, read once per key; the script's own increments update them
-- so that a key shared by several steps sees what earlier steps took. `fresh`:
-- the keys that did not exist, which an increment below creates.
local values = {}
local fresh = {}
local function value(index)
  local current = values[index]
  if current == nil then
    local stored = redis.call('GET', KEYS[index])
    if stored == false then
      fresh[index] = true
      stored = '0'
    end
    -- Fail before any write (Redis does not roll a script back) if a counter is not an integer.
    assert(string.find(stored, '^-?%d+$'), 'counter is not an integer: ' .. KEYS[index])
    current = tonumber(stored)
    values[index] = current
  end
  return current
end

local claim_ttl = tonumber(ARGV[3])
if claim_ttl > 0 then
  if redis.call('SET', KEYS[#KEYS - 2], ARGV[4], 'NX', 'EX', claim_ttl) == false then
    return {-1}
  end
end

local payable = tonumber(ARGV[1])
local step_count = tonumber(ARGV[2])
local at = 5
local stopped_kinds = {}
local deltas = {}
local result = {}

for step = 1, step_count do
  local kind = ARGV[at]
  local exclusive = ARGV[at + 1] == '1'
  local bp = tonumber(ARGV[at + 2])
  local amount = tonumber(ARGV[at + 3])
  local counter_count = tonumber(ARGV[at + 4])
  local first = at + 5
  at = first + 3 * counter_count

  local wanted
  if bp >= 0 then
    wanted = percent_of(payable, bp)
    if amount >= 0 and amount < wanted then
      wanted = amount
    end
  else
    wanted = math.min(amount, payable)
  end

  local given, stop = wanted, 0
  if stopped_kinds[kind] ~= nil then
    given, stop = 0, -stopped_kinds[kind]
  else
    for counter = 1, counter_count do
      local arg = first + 3 * (counter - 1)
      local room = math.max(tonumber(ARGV[arg + 2]) - value(tonumber(ARGV[arg])), 0)
      if ARGV[arg + 1] == 'u' then
        if room < 1 then
          given, stop = 0, counter
          break
        end
      elseif room < given then
        given, stop = room, counter
      end
    end
    if given > 0 then
      for counter = 1, counter_count do
        local arg = first + 3 * (counter - 1)
        local index = tonumber(ARGV[arg])
        local increment = 1
        if ARGV[arg + 1] == 'f' then
          increment = given
        end
        values[index] = value(index) + increment
        deltas[index] = (deltas[index] or 0) + increment
      end
      payable = payable - given
      if exclusive then
        stopped_kinds[kind] = step
      end
    end
  end
  result[#result + 1] = given
  result[#result + 1] = wanted
  result[#result + 1] = stop
end

-- Write at the end: nothing above can fail half-way through a plan. A counter
-- created here has no time to live: an EXPIRE here cost the swipe's tail at a
-- moderate rate (p99 15-25 ms against 6-9; docs/performance-rounds.md, eighteenth
-- round), so the script notes it in the untimed set, `counters expire` gives it
-- one later without reading every counter's, and INCRBY keeps it. The notes go
-- first, in chunks well within unpack's limit: if SADD fails (the set's key holds
-- something else), no counter has changed yet.
local created = {}
for index, _ in pairs(deltas) do
  if fresh[index] then
    created[#created + 1] = KEYS[index]
  end
end
for first = 1, #created, 1000 do
  redis.call('SADD', KEYS[#KEYS - 1], unpack(created, first, math.min(first + 999, #created)))
end
local changed = false
for index, delta in pairs(deltas) do
  redis.call('INCRBY', KEYS[index], string.format('%d', delta))
  changed = true
end
if changed then
  redis.call('INCR', KEYS[#KEYS])
end
return result
