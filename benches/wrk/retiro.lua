-- POST /retiro of 1 CLP over WRK_ACCOUNTS accounts (default 10,000: cuenta0 … cuenta9999).
local n = 0
local accounts = tonumber(os.getenv("WRK_ACCOUNTS") or "10000")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  return wrk.format(nil, "/retiro", nil, '{"usuario":"cuenta' .. (n % accounts) .. '","monto":1}')
end
