-- POST /retiro of 1 CLP over 10,000 accounts (cuenta0 … cuenta9999).
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  return wrk.format(nil, "/retiro", nil, '{"usuario":"cuenta' .. (n % 10000) .. '","monto":1}')
end
