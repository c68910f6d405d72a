-- Prepended to settle.lua and settle_sums.lua (src/store/redis/scripts.rs).
--
-- Writes that fail (a key of the wrong type, an overflow) do not stop a settlement script:
-- Redis does not roll a script back, so stopping would leave part of the batch applied with
-- its ids claimed, and the entries' writes after the failure would be lost. Each is skipped
-- instead and the first error is returned, so the batch's entries are applied exactly once
-- everywhere else.
local failed = false
local function write(...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then
    failed = failed or r.err
    return nil
  end
  return r
end

