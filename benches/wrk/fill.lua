-- retiro.lua's debits (run from the repository's root), 20 for each of
-- WRK_ACCOUNTS accounts, then stops: gives every account a full history page.
dofile("benches/wrk/retiro.lua")
local answered = 0
local total = tonumber(os.getenv("WRK_ACCOUNTS") or "10000") * 20
response = function()
  answered = answered + 1
  if answered >= total then
    wrk.thread:stop()
  end
end
