-- Check and reserve a batch of requests, one after the other, each as if it had come alone:
-- every counter a request touches, of its profile and of its org, in one hash slot (on
-- Redis Cluster every key of a batch is in one slot; the caller makes one batch per slot).
-- Nothing is added for a request unless none of its counters refuses.
--
-- KEYS: the hashes of ids of recent calls (one per tag and hour) and the counter hashes
-- (one per tenant and window), each named once; arguments refer to them by index.
-- ARGV[1]: the number of requests. Then for each request: its id hash (key index), the id
-- hash's expire-at (unix seconds, or 0 when it is set already), its id, its number of
-- counter hashes, and for each counter hash:
-- its key index, its expire-at (unix seconds), its number of counters, and for each counter
-- 4 values: the counter's 0-based index in the request, field, amount, max ("" when no
-- limit watches the counter).
--
-- A counter refuses when amount > 0 and current >= max. Values are decimal strings as
-- HINCRBY writes them and are compared as strings, so the check is exact over the whole
-- signed 64-bit range (Lua numbers are doubles, exact only below 2^53).
--
-- An admitted call records its id: a journal replay of the same reservation (made when
-- this call was given up on) then changes nothing, and this call changes nothing if the
-- replay came first. A counter hash gets its expiry when it is created; an id hash gets the
-- expire-at it is sent with once per batch (the caller sends it once per process).
--
-- Returns one reply per request, in order: {1, before_0, ..., before_n-1} when admitted
-- (values before this request, by index), {0, index, current} for the refusing counter
-- with the lowest index, or {2} when the id was already applied.

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

-- One request whose arguments start at `at`; returns its reply and where the next starts.
local function reserve(at)
  local calls, id, groups = KEYS[tonumber(ARGV[at])], ARGV[at + 2], tonumber(ARGV[at + 3])
  local start = at + 4
  -- Where each group's arguments end, to skip a request read past.
  local function skip()
    local g = start
    for _ = 1, groups do
      g = g + 3 + tonumber(ARGV[g + 2]) * 4
    end
    return g
  end
  -- Claim the id first (one call on the common, admitted path); a refusal gives it back.
  if call('HSETNX', calls, id, 1) == 0 then
    return {2}, skip()
  end

  -- out[index + 2]: the value of counter `index` before this request.
  local out = {1}
  local refused, refused_at
  local g = start
  for _ = 1, groups do
    local key, n = KEYS[tonumber(ARGV[g])], tonumber(ARGV[g + 2])
    local first = g + 3
    local fields = {}
    for f = 1, n do
      fields[f] = ARGV[first + (f - 1) * 4 + 1]
    end
    local values = call('HMGET', key, unpack(fields))
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
    g = first + n * 4
  end
  if refused ~= nil then
    call('HDEL', calls, id)
    return {0, refused, refused_at}, g
  end

  g = start
  for _ = 1, groups do
    local key, expire, n = KEYS[tonumber(ARGV[g])], ARGV[g + 1], tonumber(ARGV[g + 2])
    local first = g + 3
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
    g = first + n * 4
  end
  return out, g
end

local n = tonumber(ARGV[1])
-- The id hashes to give an expiry, in order of first use. (One that no admitted request
-- wrote does not exist; the caller sends its expiry again next time.)
local replies, expiring, order = {}, {}, {}
local at = 2
for r = 1, n do
  local calls, expire = ARGV[at], ARGV[at + 1]
  replies[r], at = reserve(at)
  if expire ~= '0' and not expiring[calls] then
    expiring[calls] = true
    order[#order + 1] = calls
    order[#order + 1] = expire
  end
end
for i = 1, #order, 2 do
  call('EXPIREAT', KEYS[tonumber(order[i])], order[i + 1])
end
return replies
