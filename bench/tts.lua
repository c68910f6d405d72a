-- wrk script: ElevenLabs text-to-speech requests (615 characters, $0.0615 each at the
-- built-in price) spread over TENANTS profiles (100 unless set in the environment).
local body = '{"text":"' .. string.rep("x", 615) .. '","model_id":"eleven_multilingual_v2"}'
local tenants = tonumber(os.getenv("TENANTS") or "100")
local n = 0

request = function()
  n = n + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Profile-Id"] = "bench-" .. (n % tenants),
  }
  return wrk.format("POST", wrk.path, headers, body)
end
