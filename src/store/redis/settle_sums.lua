-- Apply a batch of first-call settlements whose writes the caller has already summed: the
-- fast path of `settle.lua` for batches without replays or attribution tags. On Redis
-- Cluster every key of a batch is in one hash slot.
--
-- ARGV[1]: the cap of the recent lists; ARGV[2]: the number of entries; then for each entry
-- its call-id hash (key index), that hash's expire-at (0 when it is set already) and its
-- id. Then the number of hashes, and for each: its key index, its expire-at, its number of
-- fields, and for each field its name and the sum of the batch's amounts (an exact integer
-- string). Then the number of recent lists, and for each: its key index, its expire-at (0
-- when it is set already), its number of records, and the records, oldest first.
--
-- The sums are only right if every entry is applied here for the first time. So the ids
-- are claimed first (`HSETNX`, before anything else is written): if any was applied before
-- (a retry of a batch whose answer was lost, a settlement given up on and replayed), the
-- claims made by this call are taken back and the script returns {0} having changed
-- nothing; the caller then sends the batch through `settle.lua`, which applies each entry
-- at most once. Out of memory, Redis refuses a script's writes only until its first write
-- succeeds: either the first claim fails and nothing is written, or the whole batch is.
--
-- Returns {1, the first write that failed or ''} when applied. A failed write (a key of
-- the wrong type, an overflow) is skipped, not retried, as in `settle.lua`.

local tonumber, ARGV, KEYS, call = tonumber, ARGV, KEYS, redis.call
local cap, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local trim_past = cap + math.max(8, math.floor(cap / 4))

local at = 3
for e = 1, n do
  local r = redis.pcall('HSETNX', KEYS[tonumber(ARGV[at])], ARGV[at + 2], 1)
  if r ~= 1 then
    -- Applied before (or the claim failed): give back this call's claims and change nothing.
    local back = 3
    for _ = 1, e - 1 do
      redis.pcall('HDEL', KEYS[tonumber(ARGV[back])], ARGV[back + 2])
      back = back + 3
    end
    if type(r) == 'table' then
      return redis.error_reply('cannot claim a settlement id: ' .. tostring(r.err))
    end
    return {0}
  end
  at = at + 3
end

-- `write` (a write that fails is skipped; the first error is kept in `failed`) comes from
-- write.lua, which is prepended.

local done = {}
at = 3
for _ = 1, n do
  local calls, expire = ARGV[at], ARGV[at + 1]
  if expire ~= '0' and not done[calls] then
    done[calls] = true
    write('EXPIREAT', KEYS[tonumber(calls)], expire)
  end
  at = at + 3
end

local hashes = tonumber(ARGV[at])
at = at + 1
for _ = 1, hashes do
  local key, expire, fields = KEYS[tonumber(ARGV[at])], ARGV[at + 1], tonumber(ARGV[at + 2])
  at = at + 3
  local anchored = false
  for _ = 1, fields do
    local by = ARGV[at + 1]
    local v = write('HINCRBY', key, ARGV[at], by)
    if v and not anchored then
      anchored = true
      -- The first field written was new: so is the hash.
      if v == tonumber(by) then
        write('EXPIREAT', key, expire)
      end
    end
    at = at + 2
  end
end

local lists = tonumber(ARGV[at])
at = at + 1
for _ = 1, lists do
  local key, expire, records = KEYS[tonumber(ARGV[at])], ARGV[at + 1], tonumber(ARGV[at + 2])
  at = at + 3
  local len = write('LPUSH', key, unpack(ARGV, at, at + records - 1))
  at = at + records
  if len then
    if len > trim_past then
      write('LTRIM', key, 0, cap - 1)
    end
    if expire ~= '0' then
      write('EXPIREAT', key, expire)
    end
  end
end
return {1, failed or ''}
