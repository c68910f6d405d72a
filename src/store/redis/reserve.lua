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
-- Returns {1, before_0, ..., before_n-1} when admitted (values before this request, by
-- index), {0, index, current} for the refusing counter with the lowest index, or {2} when
-- the id was already applied.

local tonumber, ARGV, KEYS, call = tonumber, ARGV, KEYS, redis.call

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

-- Claim the id first (one call on the common, admitted path); a refusal gives it back.
if call('HSETNX', KEYS[1], ARGV[1], 1) == 0 then
  return {2}
end

-- out[index + 2]: the value of counter `index` before this request.
local out = {1}
local refused, refused_at
local groups = tonumber(ARGV[3])
local at = 4
for k = 2, groups + 1 do
  local n = tonumber(ARGV[at + 1])
  local first = at + 2
  local fields = {}
  for f = 1, n do
    fields[f] = ARGV[first + (f - 1) * 4 + 1]
  end
  local values = call('HMGET', KEYS[k], unpack(fields))
  for f = 1, n do
    local o = first + (f - 1) * 4
    local index, max = tonumber(ARGV[o]), ARGV[o + 3]
    local current = values[f] or '0'
    out[index + 2] = current
    if max ~= '' then
      local amount = ARGV[o + 2]
      if amount ~= '0' and amount:sub(1, 1) ~= '-' and ge(current, max) and (refused == nil or index < refused) then
        refused, refused_at = index, current
      end
    end
  end
  at = first + n * 4
end
if refused ~= nil then
  call('HDEL', KEYS[1], ARGV[1])
  return {0, refused, refused_at}
end

at = 4
for k = 2, groups + 1 do
  local key, expire, n = KEYS[k], ARGV[at], tonumber(ARGV[at + 1])
  local first = at + 2
  local anchored = false
  for o = first + 2, first + 2 + (n - 1) * 4, 4 do
    local amount = ARGV[o]
    if amount ~= '0' then
      local v = call('HINCRBY', key, ARGV[o - 1], amount)
      if not anchored then
        anchored = true
        -- The first field written was new: so is the hash.
        if v == tonumber(amount) then
          call('EXPIREAT', key, expire)
        end
      end
    end
  end
  at = first + n * 4
end
call('EXPIRE', KEYS[1], ARGV[2])
return out
