-- GET /saldo for random never-seen names: memory must stay flat (reads never insert).
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/saldo/desconocido" .. math.random(1, 2^31) .. "-" .. math.random(1, 2^31))
end
