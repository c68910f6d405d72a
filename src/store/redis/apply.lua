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
--   tags:     n tenants, then n x {tag set key index, max tags, expire-at, k, k history key
--             indexes}; t tags; f metrics, then f x {metric, value}. Each tag is counted
--             under its name in the tenant's history keys (`<metric>|#tag|<tag>`) while the
--             tenant's set of tags is below its max or already holds it, else as `other`.
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

local groups = {}
for i = 1, tonumber(take()) do
  local set, max, expire, k = KEYS[tonumber(take())], tonumber(take()), take(), tonumber(take())
  local hkeys = {}
  for j = 1, k do
    hkeys[j] = KEYS[tonumber(take())]
  end
  groups[i] = {set, max, expire, hkeys}
end
local tags = {}
for i = 1, tonumber(take()) do
  tags[i] = take()
end
local metrics = {}
for i = 1, tonumber(take()) do
  metrics[i] = {take(), take()}
end
for _, g in ipairs(groups) do
  for _, tag in ipairs(tags) do
    local name = tag
    if redis.call('SISMEMBER', g[1], tag) == 0 then
      if redis.call('SCARD', g[1]) < g[2] then
        redis.call('SADD', g[1], tag)
      else
        name = 'other'
      end
    end
    for _, h in ipairs(g[4]) do
      for _, m in ipairs(metrics) do
        redis.call('HINCRBY', h, m[1] .. '|#tag|' .. name, m[2])
      end
    end
  end
  if #tags > 0 then
    redis.call('EXPIREAT', g[1], g[3])
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
