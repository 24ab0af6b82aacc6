-- GET /movimientos over WRK_ACCOUNTS accounts (default 10,000: cuenta0 … cuenta9999),
-- the default page (20 movements when the account has them).
local n = 0
local accounts = tonumber(os.getenv("WRK_ACCOUNTS") or "10000")
request = function()
  n = n + 1
  return wrk.format("GET", "/movimientos/cuenta" .. (n % accounts))
end
