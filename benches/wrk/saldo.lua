-- GET /saldo over WRK_ACCOUNTS accounts (default 10,000: cuenta0 … cuenta9999).
local n = 0
local accounts = tonumber(os.getenv("WRK_ACCOUNTS") or "10000")
request = function()
  n = n + 1
  return wrk.format("GET", "/saldo/cuenta" .. (n % accounts))
end
