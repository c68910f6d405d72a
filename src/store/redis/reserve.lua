-- Check and reserve one request: every counter it touches, of its profile and of its org,
-- in one hash slot. Nothing is added unless no counter refuses.
--
-- KEYS[1]: the hash of ids of recent calls (one per tag and hour); KEYS[2..]: the counter
-- hashes (one per tenant and window).
-- ARGV[1]: the call's id; ARGV[2]: seconds the id is kept; ARGV[3]: the number of counter
-- hashes; then for each counter hash, in KEYS order: its expire-at (unix seconds), its
-- number of counters, and for each counter 4 values: the counter's 0-based index in the
-- request, field, amount, max ("" when no limit watches the counter).
--
-- A counter refuses when amount > 0 and current >= max. Values are decimal strings as
-- HINCRBY writes them and are compared as strings, so the check is exact over the whole
-- signed 64-bit range (Lua numbers are doubles, exact only below 2^53).
--
-- An admitted call records its id: a journal replay of the same reservation (made when
-- this call was given up on) then changes nothing, and this call changes nothing if the
-- replay came first. A counter hash gets its expiry when it is created.
--
-- Two calls per counter hash (HMGET, HSET), whatever the number of its counters: the calls
-- a script makes are most of what it costs Redis.
--
-- Returns {1, before_0, ..., before_n-1} when admitted (values before this request, by
-- index), {0, index, current} for the refusing counter with the lowest index, or {2} when
-- the id was already applied.

local function ge(a, b)
  local na, nb = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
  if na ~= nb then
    return nb
  end
  if na then
    a, b = b:sub(2), a:sub(2)
  end
  if #a ~= #b then
    return #a > #b
  end
  return a >= b
end

local function positive(amount)
  return amount ~= '0' and amount:sub(1, 1) ~= '-'
end

-- Claim the id first (one call on the common, admitted path); a refusal gives it back.
if redis.call('HSETNX', KEYS[1], ARGV[1], 1) == 0 then
  return {2}
end

local groups = {}
local before = {}
local refused, refused_at
local at = 4
for k = 1, tonumber(ARGV[3]) do
  local key, expire, n = KEYS[k + 1], ARGV[at], tonumber(ARGV[at + 1])
  at = at + 2
  local fields = {}
  for f = 1, n do
    fields[f] = ARGV[at + (f - 1) * 4 + 1]
  end
  local values = redis.call('HMGET', key, unpack(fields))
  for f = 1, n do
    local o = at + (f - 1) * 4
    local index, amount, max = tonumber(ARGV[o]), ARGV[o + 2], ARGV[o + 3]
    local current = values[f] or '0'
    before[index + 1] = current
    if max ~= '' and positive(amount) and ge(current, max) and (refused == nil or index < refused) then
      refused, refused_at = index, current
    end
  end
  groups[k] = {key, expire, at, n, values}
  at = at + n * 4
end
if refused ~= nil then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return {0, refused, refused_at}
end

-- Each hash is written with one HSET of its new values, computed from the values just read:
-- exact while the value and the amounts have at most 15 characters (Lua numbers are
-- doubles, exact below 2^53, and a value plus up to four such amounts stays below 6 * 10^15);
-- a longer one, or a field of more ops, goes to HINCRBY as the decimal strings they are. A hash whose fields were
-- all absent is new: it gets its expiry.
for _, g in ipairs(groups) do
  local key, expire, first, n, values = g[1], g[2], g[3], g[4], g[5]
  local fresh = true
  -- A field counted by two ops (two limits with the same match) gets both amounts; a field
  -- whose value or an amount is long is left to HINCRBY altogether.
  local long, ops, sums, order = {}, {}, {}, {}
  for f = 1, n do
    local o = first + (f - 1) * 4
    local field, amount, current = ARGV[o + 1], ARGV[o + 2], values[f]
    if current then
      fresh = false
    end
    ops[field] = (ops[field] or 0) + 1
    if amount ~= '0' and (#amount > 15 or (current and #current > 15) or ops[field] > 4) then
      long[field] = true
    end
  end
  for f = 1, n do
    local o = first + (f - 1) * 4
    local field, amount = ARGV[o + 1], ARGV[o + 2]
    if amount ~= '0' then
      if long[field] then
        redis.call('HINCRBY', key, field, amount)
      else
        if sums[field] == nil then
          sums[field] = tonumber(values[f] or '0')
          order[#order + 1] = field
        end
        sums[field] = sums[field] + tonumber(amount)
      end
    end
  end
  if #order > 0 then
    local set = {}
    for _, field in ipairs(order) do
      set[#set + 1] = field
      set[#set + 1] = string.format('%.0f', sums[field])
    end
    redis.call('HSET', key, unpack(set))
  end
  if fresh then
    redis.call('EXPIREAT', key, expire)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])

local out = {1}
for i = 1, #before do
  out[i + 1] = before[i]
end
return out
