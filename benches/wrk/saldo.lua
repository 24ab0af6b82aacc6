-- GET /saldo over 10,000 accounts (cuenta0 … cuenta9999).
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/saldo/cuenta" .. (n % 10000))
end
