-- POST /retiro of 1 CLP for cliente0 … cliente999, each with its own bearer
-- token when WRK_TOKEN_FILE names a file of tokens (one per line, line i
-- minted with sub = cliente<i-1>); without it, the same requests and no token.
local tokens = {}
local path = os.getenv("WRK_TOKEN_FILE")
if path and #path > 0 then
  for line in io.lines(path) do
    if #line > 0 then tokens[#tokens + 1] = "Bearer " .. line end
  end
end
local accounts = #tokens > 0 and #tokens or 1000
local n = 0
wrk.method = "POST"
request = function()
  local i = n % accounts
  n = n + 1
  local headers = { ["Content-Type"] = "application/json" }
  if #tokens > 0 then headers["Authorization"] = tokens[i + 1] end
  return wrk.format(nil, "/retiro", headers, '{"usuario":"cliente' .. i .. '","monto":1}')
end
