-- Apply a batch of settlements (or of journal entries replayed after an outage): counter
-- deltas, the history of the day and month, and the capped lists of recent requests. Each
-- entry is applied at most once, by its id. On Redis Cluster every key of a batch is in one
-- hash slot (the caller makes one batch per slot).
--
-- ARGV[1]: seconds a hash of call ids is kept; ARGV[2]: seconds a set of replayed ids is
-- kept; ARGV[3]: the cap of the recent lists; ARGV[4]: the number of entries. Then for each
-- entry, in order:
--   its call-id hash (key index), its id, its replayed-id set (key index; 0 for a first
--   call, which is not a replay);
--   counters: n, then n x {key index, field, delta, expire-at}
--   history:  n keys, then n x {key index, expire-at}; m fields, then m x {field, value}
--             (every field is added to every history key of the entry)
--   tags:     t, then t tags; when t > 0: g tenants, then g x {tag set key index, max
--             tags, expire-at, day history key index, month history key index}. Each field's
--             metric (its part before the first `|`) is also counted as `<metric>|#tag|<tag>`
--             in the tenant's two history keys, under the tag's name while the tenant's set
--             of tags holds it or is below its max, else under `other`.
--   recent:   n lists, then n x {key index, expire-at}; the record
--
-- What does not depend on one entry is done once per batch: each id hash, replay set and
-- tag set gets its expiry once; each counter and history field is incremented once, by the sum of its
-- entries' amounts; each hash gets its expire-at once, when the batch creates it; each list
-- gets one push of all its records, one trim and one expiry.
--
-- Sums stay exact: amounts of at most 15 digits are summed as Lua numbers (doubles, exact
-- below 2^53) and written out before a sum reaches 10^15; longer amounts are passed to
-- HINCRBY as the decimal strings they are.
--
-- Returns the number of entries applied (the others had been applied before: by their
-- first call, or by an earlier, interrupted replay).

local at = 0
local function take()
  at = at + 1
  return ARGV[at]
end

local calls_ttl, replay_ttl, cap, n = take(), take(), tonumber(take()), tonumber(take())

local expiring = {}
local function expire_once(key, ttl)
  if not expiring[key] then
    expiring[key] = true
    redis.call('EXPIRE', key, ttl)
  end
end

-- Increments by hash, in the order first seen.
local hashes, sums = {}, {}
local function add(key, field, by, expire)
  local h = sums[key]
  if not h then
    h = {expire = expire, fields = {}, values = {}, long = {}}
    sums[key] = h
    hashes[#hashes + 1] = key
  end
  if #by > 15 then
    h.long[#h.long + 1] = {field, by}
    return
  end
  local v = h.values[field]
  if v == nil then
    -- Kept as given: a field counted once is passed on without a conversion.
    h.fields[#h.fields + 1] = field
    h.values[field] = by
    return
  end
  v = tonumber(v) + tonumber(by)
  if v >= 1e15 or v <= -1e15 then
    h.long[#h.long + 1] = {field, string.format('%.0f', v)}
    v = 0
  end
  h.values[field] = v
end

local lists, pushes = {}, {}
-- Tag sets touched by the batch, in order, with their expire-at.
local tag_sets, tag_order = {}, {}

local applied = 0
for _ = 1, n do
  local calls, id, replayed = KEYS[tonumber(take())], take(), tonumber(take())
  local fresh = redis.call('HSETNX', calls, id, 1) == 1
  expire_once(calls, calls_ttl)
  if fresh and replayed > 0 then
    fresh = redis.call('SADD', KEYS[replayed], id) == 1
    expire_once(KEYS[replayed], replay_ttl)
  end
  -- An entry applied before is read past without effect.
  for _ = 1, tonumber(take()) do
    local key, field, delta, expire = KEYS[tonumber(take())], take(), take(), take()
    if fresh then
      add(key, field, delta, expire)
    end
  end
  local hist, hist_expires = {}, {}
  for i = 1, tonumber(take()) do
    local idx, expire = tonumber(take()), take()
    hist[i] = {KEYS[idx], expire}
    hist_expires[idx] = expire
  end
  local function hist_expire(idx)
    return hist_expires[idx]
  end
  local fields = {}
  for i = 1, tonumber(take()) do
    local field, value = take(), take()
    fields[i] = {field, value}
    if fresh then
      for _, h in ipairs(hist) do
        add(h[1], field, value, h[2])
      end
    end
  end
  local tags = {}
  for i = 1, tonumber(take()) do
    tags[i] = take()
  end
  if #tags > 0 then
    for _ = 1, tonumber(take()) do
      local set, max, expire = KEYS[tonumber(take())], tonumber(take()), take()
      local day, month = tonumber(take()), tonumber(take())
      if fresh then
        for _, tag in ipairs(tags) do
          local name = tag
          if redis.call('SISMEMBER', set, tag) == 0 then
            if redis.call('SCARD', set) < max then
              redis.call('SADD', set, tag)
            else
              name = 'other'
            end
          end
          for _, f in ipairs(fields) do
            local field = string.match(f[1], '^[^|]+') .. '|#tag|' .. name
            add(KEYS[day], field, f[2], hist_expire(day))
            add(KEYS[month], field, f[2], hist_expire(month))
          end
        end
        if not tag_sets[set] then
          tag_sets[set] = true
          tag_order[#tag_order + 1] = {set, expire}
        end
      end
    end
  end
  local mine = {}
  for i = 1, tonumber(take()) do
    mine[i] = {KEYS[tonumber(take())], take()}
  end
  local record = take()
  if fresh then
    applied = applied + 1
    for _, l in ipairs(mine) do
      local p = pushes[l[1]]
      if not p then
        p = {}
        pushes[l[1]] = p
        lists[#lists + 1] = l[1]
      end
      p.expire = l[2]
      p[#p + 1] = record
    end
  end
end

for _, key in ipairs(hashes) do
  local h = sums[key]
  local anchored = false
  local function incr(field, by)
    local v = redis.call('HINCRBY', key, field, by)
    if not anchored then
      anchored = true
      -- The first field written was new: so is the hash.
      if v == tonumber(by) then
        redis.call('EXPIREAT', key, h.expire)
      end
    end
  end
  for _, field in ipairs(h.fields) do
    local v = h.values[field]
    if type(v) == 'string' then
      incr(field, v)
    elseif v ~= 0 then
      incr(field, string.format('%.0f', v))
    end
  end
  for _, l in ipairs(h.long) do
    incr(l[1], l[2])
  end
end

for _, t in ipairs(tag_order) do
  redis.call('EXPIREAT', t[1], t[2])
end

for _, key in ipairs(lists) do
  local p = pushes[key]
  -- Oldest first, so the newest ends up at the head.
  redis.call('LPUSH', key, unpack(p))
  redis.call('LTRIM', key, 0, cap - 1)
  redis.call('EXPIREAT', key, p.expire)
end
return applied
