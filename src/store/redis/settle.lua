-- Apply a batch of settlements (or of journal entries replayed after an outage): counter
-- deltas, the history of the day and month, and the capped lists of recent requests. Each
-- entry is applied at most once, by its id. On Redis Cluster every key of a batch is in one
-- hash slot (the caller makes one batch per slot).
--
-- ARGV[1]: seconds a set of replayed ids is kept; ARGV[2]: the cap of the recent lists;
-- ARGV[3]: the number of entries. Then for each entry, in order:
--   its call-id hash (key index), that hash's expire-at (0 when it is set already), its
--   id, its replayed-id set (key index; 0 for a first call, which is not a replay);
--   counters: n, then n x {key index, field, delta, expire-at}
--   history:  n keys, then n x {key index, expire-at}; m fields, then m x {field, value}
--             (every field is added to every history key of the entry)
--   tags:     t, then t tags; when t > 0: g tenants, then g x {tag set key index, max
--             tags, expire-at, day history key index, month history key index}. Each field's
--             metric (its part before the first `|`) is also counted as `<metric>|#tag|<tag>`
--             in the tenant's two history keys, under the tag's name while the tenant's set
--             of tags holds it or is below its max, else under `other`.
--   recent:   n lists, then n x {key index, expire-at (0 when it is set already)}; the
--             record
--
-- What does not depend on one entry is done once per batch: each id hash, replay set and
-- tag set gets its expiry once; each counter and history field is incremented once, by the
-- sum of its entries' amounts; each hash gets its expire-at once, when the batch creates
-- it; each list gets one push of all its records and its expiry. A list is trimmed back to
-- the cap only once it has grown a quarter past it (readers take the newest `cap`), so that
-- most pushes need no trim. Expire-ats that do not change (an id hash's, a list's for the
-- day) are sent by the caller once per process, not with every batch.
--
-- Sums stay exact: amounts of at most 15 digits are summed as Lua numbers (doubles, exact
-- below 2^53) and written out before a sum reaches 10^15; longer amounts are passed to
-- HINCRBY as the decimal strings they are.
--
-- The loop over the entries reads ARGV in place and builds no table per entry (the history
-- keys and fields of an entry are revisited by their positions in ARGV): Lua's allocations
-- and collections, not Redis's commands, were most of this script's cost.
--
-- Returns {the number of entries applied (the others had been applied before: by their
-- first call, or by an earlier, interrupted replay), the first write that failed or ''}.
-- A failed write is skipped, not retried (see `write`).
--
-- Each entry claims its id first (`HSETNX`), before anything is written. Out of memory,
-- Redis refuses a script's writes only until its first write succeeds: so either the
-- first claim fails and the script stops having written nothing (the batch is retried),
-- or every write of the batch is accepted.

local tonumber, ARGV, KEYS, call = tonumber, ARGV, KEYS, redis.call
local replay_ttl, cap, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
-- A list is trimmed once it holds this many records.
local trim_past = cap + math.max(8, math.floor(cap / 4))

-- `write` (a write that fails is skipped; the first error is kept in `failed`) comes from
-- write.lua, which is prepended.

-- Increments by hash, in the order first seen: per hash its expire-at, its fields in order,
-- their sums (a string until a second amount is added), and the amounts too long to sum.
local hashes, expires, orders, sums, longs = {}, {}, {}, {}, {}
local function add_long(key, field, by)
  local l = longs[key]
  if not l then
    l = {}
    longs[key] = l
  end
  l[#l + 1] = field
  l[#l + 1] = by
end
local function add(key, field, by, expire)
  local values = sums[key]
  if not values then
    values = {}
    sums[key] = values
    orders[key] = {}
    expires[key] = expire
    hashes[#hashes + 1] = key
  end
  if #by > 15 then
    add_long(key, field, by)
    return
  end
  local v = values[field]
  if v == nil then
    -- Kept as given: a field counted once is passed on without a conversion.
    local order = orders[key]
    order[#order + 1] = field
    values[field] = by
    return
  end
  v = tonumber(v) + tonumber(by)
  if v >= 1e15 or v <= -1e15 then
    add_long(key, field, string.format('%.0f', v))
    v = 0
  end
  values[field] = v
end

-- Recent lists: in order first seen, each with its records and expire-at.
local lists, pushes, list_expires = {}, {}, {}
-- Tag sets touched by the batch, in order, with their expire-at.
local tag_sets, tag_order = {}, {}
-- Id hashes to give their expire-at, and replayed ids to record, in order.
local id_expires, id_expiring, replays = {}, {}, {}

-- The ids this call claimed, so that they can be given back if a later claim fails: the
-- entries' writes come after the loop, and an id left claimed without them would be lost.
local claimed = {}
local function claim_failed(r)
  for i = 1, #claimed, 2 do
    redis.pcall('HDEL', claimed[i], claimed[i + 1])
  end
  return redis.error_reply('cannot claim a settlement id: ' .. tostring(r.err))
end

local applied = 0
local at = 4
for _ = 1, n do
  local calls, calls_expire, id, replayed = KEYS[tonumber(ARGV[at])], ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3])
  at = at + 4
  local r = redis.pcall('HSETNX', calls, id, 1)
  if type(r) == 'table' then
    return claim_failed(r)
  end
  local fresh = r == 1
  if fresh then
    claimed[#claimed + 1] = calls
    claimed[#claimed + 1] = id
  end
  if fresh and replayed > 0 then
    -- Applied by an earlier replay whose first call's id has expired since.
    r = redis.pcall('SISMEMBER', KEYS[replayed], id)
    if type(r) == 'table' then
      return claim_failed(r)
    end
    fresh = r == 0
  end
  if fresh and replayed > 0 then
    replays[#replays + 1] = KEYS[replayed]
    replays[#replays + 1] = id
  end
  if calls_expire ~= '0' and not id_expiring[calls] then
    id_expiring[calls] = true
    id_expires[#id_expires + 1] = calls
    id_expires[#id_expires + 1] = calls_expire
  end
  -- An entry applied before is read past without effect.
  local count = tonumber(ARGV[at])
  at = at + 1
  if fresh then
    for o = at, at + (count - 1) * 4, 4 do
      add(KEYS[tonumber(ARGV[o])], ARGV[o + 1], ARGV[o + 2], ARGV[o + 3])
    end
  end
  at = at + count * 4
  -- History keys: `nh` pairs from `hist`; fields: `nf` pairs from `fields`.
  local nh = tonumber(ARGV[at])
  local hist = at + 1
  at = hist + nh * 2
  local nf = tonumber(ARGV[at])
  local fields = at + 1
  at = fields + nf * 2
  if fresh then
    for f = fields, fields + (nf - 1) * 2, 2 do
      local field, value = ARGV[f], ARGV[f + 1]
      for h = hist, hist + (nh - 1) * 2, 2 do
        add(KEYS[tonumber(ARGV[h])], field, value, ARGV[h + 1])
      end
    end
  end
  local nt = tonumber(ARGV[at])
  local tags = at + 1
  at = tags + nt
  if nt > 0 then
    local ng = tonumber(ARGV[at])
    at = at + 1
    for g = at, at + (ng - 1) * 5, 5 do
      if fresh then
        local set, max, expire = KEYS[tonumber(ARGV[g])], tonumber(ARGV[g + 1]), ARGV[g + 2]
        local day, month = tonumber(ARGV[g + 3]), tonumber(ARGV[g + 4])
        -- The expiry of a history key is the one given with it among the entry's keys.
        local day_expire, month_expire
        for h = hist, hist + (nh - 1) * 2, 2 do
          local idx = tonumber(ARGV[h])
          if idx == day then
            day_expire = ARGV[h + 1]
          elseif idx == month then
            month_expire = ARGV[h + 1]
          end
        end
        for t = tags, tags + nt - 1 do
          local tag = ARGV[t]
          local name = tag
          if write('SISMEMBER', set, tag) ~= 1 then
            if (write('SCARD', set) or max) < max then
              write('SADD', set, tag)
            else
              name = 'other'
            end
          end
          for f = fields, fields + (nf - 1) * 2, 2 do
            local field = string.match(ARGV[f], '^[^|]+') .. '|#tag|' .. name
            add(KEYS[day], field, ARGV[f + 1], day_expire)
            add(KEYS[month], field, ARGV[f + 1], month_expire)
          end
        end
        if not tag_sets[set] then
          tag_sets[set] = true
          tag_order[#tag_order + 1] = set
          tag_order[#tag_order + 1] = expire
        end
      end
    end
    at = at + ng * 5
  end
  local nl = tonumber(ARGV[at])
  local mine = at + 1
  at = mine + nl * 2
  local record = ARGV[at]
  at = at + 1
  for l = mine, mine + (nl - 1) * 2, 2 do
    -- An expire-at is sent with one entry only: kept even when that entry was applied before.
    if ARGV[l + 1] ~= '0' then
      list_expires[KEYS[tonumber(ARGV[l])]] = ARGV[l + 1]
    end
  end
  if fresh then
    applied = applied + 1
    for l = mine, mine + (nl - 1) * 2, 2 do
      local key = KEYS[tonumber(ARGV[l])]
      local p = pushes[key]
      if not p then
        p = {}
        pushes[key] = p
        lists[#lists + 1] = key
      end
      p[#p + 1] = record
    end
  end
end

for i = 1, #hashes do
  local key = hashes[i]
  local values, order = sums[key], orders[key]
  local anchored = false
  local function incr(field, by)
    local v = write('HINCRBY', key, field, by)
    if v and not anchored then
      anchored = true
      -- The first field written was new: so is the hash.
      if v == tonumber(by) then
        write('EXPIREAT', key, expires[key])
      end
    end
  end
  for j = 1, #order do
    local field = order[j]
    local v = values[field]
    if type(v) == 'string' then
      incr(field, v)
    elseif v ~= 0 then
      incr(field, string.format('%.0f', v))
    end
  end
  local l = longs[key]
  if l then
    for j = 1, #l, 2 do
      incr(l[j], l[j + 1])
    end
  end
end

for i = 1, #tag_order, 2 do
  write('EXPIREAT', tag_order[i], tag_order[i + 1])
end

for i = 1, #lists do
  local key = lists[i]
  -- Oldest first, so the newest ends up at the head.
  local len = write('LPUSH', key, unpack(pushes[key]))
  if len then
    if len > trim_past then
      write('LTRIM', key, 0, cap - 1)
    end
    if list_expires[key] then
      write('EXPIREAT', key, list_expires[key])
    end
  end
end

for i = 1, #id_expires, 2 do
  write('EXPIREAT', id_expires[i], id_expires[i + 1])
end
local expiring = {}
for i = 1, #replays, 2 do
  local set = replays[i]
  write('SADD', set, replays[i + 1])
  if not expiring[set] then
    expiring[set] = true
    write('EXPIRE', set, replay_ttl)
  end
end
return {applied, failed or ''}
