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
-- A counter refuses when amount > 0 and current >= max. A counter with an amount is
-- incremented first and its value before is taken from the answer (one call instead of a
-- read and a write); the script runs alone, so adding, checking, and taking the amounts back
-- when a counter refuses is the same as checking first. Values before are exact decimal
-- strings (an answer too large for a Lua number, which is exact only below 2^53, is read
-- back as a string) and are compared with the max as strings, so the check is exact over
-- the whole signed 64-bit range.
--
-- An admitted call records its id: a journal replay of the same reservation (made when
-- this call was given up on) then changes nothing, and this call changes nothing if the
-- replay came first. A counter hash gets its expiry when it is created; an id hash gets the
-- expire-at it is sent with once per batch (the caller sends it once per process).
--
-- Returns one reply per request, in order: {1, before_0, ..., before_n-1} when admitted
-- (values before this request, by index), {0, index, current} for the refusing counter
-- with the lowest index, {2} when the id was already applied, or {3, error} when Redis
-- refused one of its writes (all of them then taken back).

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

-- The decimal string of an integer amount, negated.
local function negated(a)
  if a:sub(1, 1) == '-' then
    return a:sub(2)
  end
  return '-' .. a
end

-- Lua numbers are exact below 2^53: an answer of HINCRBY inside that range, minus an amount
-- of at most 15 digits, is exact.
local EXACT = 9007199254740992

-- Adds `amount` to a counter and returns its value before, as an exact decimal string, and
-- whether it was added: an increment past the signed 64-bit range is not (the counter is
-- only read; it is added if the request is admitted, where Redis refuses it as before).
local function before(key, field, amount)
  if #amount <= 15 then
    local v = redis.pcall('HINCRBY', key, field, amount)
    if type(v) == 'number' then
      local b = v - tonumber(amount)
      if v < EXACT and v > -EXACT and b < EXACT and b > -EXACT then
        return string.format('%.0f', b), true
      end
      -- Too large for a Lua number: take it back, read the value as the string it is.
      call('HINCRBY', key, field, negated(amount))
    end
  end
  local current = call('HGET', key, field) or '0'
  local v = redis.pcall('HINCRBY', key, field, amount)
  return current, type(v) == 'number'
end

-- What the request being decided has written so far: the counters it added to (key, field,
-- amount) and its claimed id (key, id), so that a failure part-way can be taken back.
local added, claim

-- One request whose arguments start at `at`; returns its reply.
local function reserve(at)
  local calls, id, groups = KEYS[tonumber(ARGV[at])], ARGV[at + 2], tonumber(ARGV[at + 3])
  local start = at + 4
  -- Claim the id first (one call on the common, admitted path); a refusal gives it back.
  if call('HSETNX', calls, id, 1) == 0 then
    return {2}
  end
  claim = {calls, id}

  -- out[index + 2]: the value of counter `index` before this request. Counters with an
  -- amount are incremented at once and read from the increment's answer (the script runs
  -- alone, so adding, checking and taking back on a refusal is the same as checking and
  -- then adding); the others are read.
  local out = {1}
  local refused, refused_at
  local unadded = nil
  local g = start
  for _ = 1, groups do
    local key, expire, n = KEYS[tonumber(ARGV[g])], ARGV[g + 1], tonumber(ARGV[g + 2])
    local first = g + 3
    local anchored = false
    local reads
    for o = first, first + (n - 1) * 4, 4 do
      local field, amount = ARGV[o + 1], ARGV[o + 2]
      if amount == '0' then
        reads = reads or {}
        reads[#reads + 1] = o
      else
        local current, done = before(key, field, amount)
        if done then
          added[#added + 1] = key
          added[#added + 1] = field
          added[#added + 1] = amount
        else
          unadded = unadded or {}
          unadded[#unadded + 1] = key
          unadded[#unadded + 1] = field
          unadded[#unadded + 1] = amount
        end
        if not anchored then
          anchored = true
          -- The first field written was new: so is the hash.
          if current == '0' and call('HLEN', key) == 1 then
            call('EXPIREAT', key, expire)
          end
        end
        out[tonumber(ARGV[o]) + 2] = current
      end
    end
    if reads then
      local fields = {}
      for i = 1, #reads do
        fields[i] = ARGV[reads[i] + 1]
      end
      local values = call('HMGET', key, unpack(fields))
      for i = 1, #reads do
        out[tonumber(ARGV[reads[i]]) + 2] = values[i] or '0'
      end
    end
    for o = first, first + (n - 1) * 4, 4 do
      local index, amount, max = tonumber(ARGV[o]), ARGV[o + 2], ARGV[o + 3]
      if max ~= '' and amount ~= '0' and amount:sub(1, 1) ~= '-' and ge(out[index + 2], max) and (refused == nil or index < refused) then
        refused, refused_at = index, out[index + 2]
      end
    end
    g = first + n * 4
  end
  if refused ~= nil then
    for i = 1, #added, 3 do
      call('HINCRBY', added[i], added[i + 1], negated(added[i + 2]))
    end
    added = {}
    call('HDEL', calls, id)
    claim = nil
    return {0, refused, refused_at}
  end
  if unadded then
    for i = 1, #unadded, 3 do
      call('HINCRBY', unadded[i], unadded[i + 1], unadded[i + 2])
    end
  end
  return out
end

local n = tonumber(ARGV[1])
-- The id hashes to give an expiry, in order of first use. (One that no admitted request
-- wrote does not exist; the caller sends its expiry again next time.)
local replies, expiring, order = {}, {}, {}
local at = 2
-- Where the arguments of the request starting at `at` end.
local function ends(at)
  local g = at + 4
  for _ = 1, tonumber(ARGV[at + 3]) do
    g = g + 3 + tonumber(ARGV[g + 2]) * 4
  end
  return g
end
for r = 1, n do
  local calls, expire = ARGV[at], ARGV[at + 1]
  local finish = ends(at)
  added, claim = {}, nil
  local ok, reply = pcall(reserve, at)
  if not ok then
    -- Redis refused one of this request's writes (a key of the wrong type, an overflow of
    -- an admitted amount): everything it wrote is taken back and it alone fails.
    for i = 1, #added, 3 do
      redis.pcall('HINCRBY', added[i], added[i + 1], negated(added[i + 2]))
    end
    if claim then
      redis.pcall('HDEL', claim[1], claim[2])
    end
    if type(reply) == 'table' and reply.err then
      reply = reply.err
    end
    reply = {3, tostring(reply)}
  end
  replies[r], at = reply, finish
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
