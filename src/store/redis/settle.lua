-- Apply one settlement (or one journal entry replayed after an outage): counter deltas,
-- the history of the day and month, and the capped lists of recent requests. All keys
-- share one hash slot. Applied at most once per id.
--
-- KEYS[1]: the hash of ids of recent calls (one per tag and hour); with a replay, KEYS[2]:
--          the set of replayed ids (one per tag and day).
-- ARGV[1]: id; ARGV[2]: seconds KEYS[1] is kept; ARGV[3]: seconds KEYS[2] is kept, or ""
--          for a first call (not a replay).
-- Then, in order (each count followed by its groups):
--   counters: n, then n x {key index, field, delta, expire-at}
--   history:  n keys, then n x {key index, expire-at}; m fields, then m x {field, value}
--             (every field is added to every history key)
--   recent:   n lists, then n x {key index, expire-at}; the record; the cap
-- A hash gets its expire-at when it is created; a list at every push.
--
-- Returns 1 when applied, 0 when the id was already applied (by the first call or by an
-- earlier, interrupted replay).

local at = 1
local function take()
  at = at + 1
  return ARGV[at - 1]
end

local id, ttl, replay_ttl = take(), take(), take()
if redis.call('HSETNX', KEYS[1], id, 1) == 0 then
  return 0
end
redis.call('EXPIRE', KEYS[1], ttl)
if replay_ttl ~= '' then
  if redis.call('SADD', KEYS[2], id) == 0 then
    return 0
  end
  redis.call('EXPIRE', KEYS[2], replay_ttl)
end

-- The first increment of a hash in this call tells whether the hash is new.
local anchored = {}
local function incr(key, field, by, expire)
  local v = redis.call('HINCRBY', key, field, by)
  if not anchored[key] then
    anchored[key] = true
    if v == tonumber(by) then
      redis.call('EXPIREAT', key, expire)
    end
  end
end

for _ = 1, tonumber(take()) do
  local key, field, delta, expire = KEYS[tonumber(take())], take(), take(), take()
  incr(key, field, delta, expire)
end

local hist = {}
for i = 1, tonumber(take()) do
  hist[i] = {KEYS[tonumber(take())], take()}
end
for _ = 1, tonumber(take()) do
  local field, value = take(), take()
  for _, h in ipairs(hist) do
    incr(h[1], field, value, h[2])
  end
end

local lists = {}
for i = 1, tonumber(take()) do
  lists[i] = {KEYS[tonumber(take())], take()}
end
local record, cap = take(), tonumber(take())
for _, l in ipairs(lists) do
  redis.call('LPUSH', l[1], record)
  redis.call('LTRIM', l[1], 0, cap - 1)
  redis.call('EXPIREAT', l[1], l[2])
end
return 1
