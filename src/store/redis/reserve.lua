-- Check and reserve one request: every counter it touches, of its profile and of its org,
-- in one hash slot. Nothing is added unless no counter refuses.
--
-- KEYS[1]: the hash of ids of recent calls (one per tag and hour); KEYS[2..]: the counter
-- hashes (one per tenant and window).
-- ARGV[1]: the call's id; ARGV[2]: seconds the id is kept; ARGV[3]: n, the number of
-- counters; then n groups of 4: key index (into KEYS), field, amount, max ("" when no limit
-- watches the counter); then one expire-at (unix seconds) per counter hash.
--
-- A counter refuses when amount > 0 and current >= max. Values are decimal strings as
-- HINCRBY writes them and are compared as strings, so the check is exact over the whole
-- signed 64-bit range (Lua numbers are doubles, exact only below 2^53).
--
-- An admitted call records its id: a journal replay of the same reservation (made when
-- this call was given up on) then changes nothing, and this call changes nothing if the
-- replay came first.
--
-- Returns {1, before_1, ..., before_n} when admitted (values before this request),
-- {0, index, current} when the counter at 0-based `index` refuses, {2} when the id was
-- already applied.

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

if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return {2}
end
local n = tonumber(ARGV[3])
local out = {1}
for i = 1, n do
  local at = 4 + (i - 1) * 4
  local current = redis.call('HGET', KEYS[tonumber(ARGV[at])], ARGV[at + 1]) or '0'
  local amount, max = ARGV[at + 2], ARGV[at + 3]
  if max ~= '' and amount ~= '0' and amount:sub(1, 1) ~= '-' and ge(current, max) then
    return {0, i - 1, current}
  end
  out[i + 1] = current
end
for i = 1, n do
  local at = 4 + (i - 1) * 4
  if ARGV[at + 2] ~= '0' then
    redis.call('HINCRBY', KEYS[tonumber(ARGV[at])], ARGV[at + 1], ARGV[at + 2])
  end
end
local exp = 4 + n * 4
for k = 2, #KEYS do
  redis.call('EXPIREAT', KEYS[k], ARGV[exp + k - 2])
end
redis.call('HSET', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return out
