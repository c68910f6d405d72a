-- wrk script: OpenAI chat completions (gpt-4o-mini, a short prompt) over 100 profiles; set
-- STREAM=1 in the environment for streamed answers (SSE, usage asked for by the proxy).
local stream = os.getenv("STREAM") == "1"
local body = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You answer questions about tides."},{"role":"user","content":"When is low tide today, and how long are the flats walkable?"}],"max_tokens":256'
  .. (stream and ',"stream":true' or '') .. '}'
local n = 0

request = function()
  n = n + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer sk-bench",
    ["X-Profile-Id"] = "bench-" .. (n % 100),
  }
  return wrk.format("POST", wrk.path, headers, body)
end
