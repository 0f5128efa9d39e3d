-- wrk script for the login runs (scripts/bench-control-plane): every request is the same
-- JSON password login, so each one costs the server one Argon2id verification.
--
-- Usage: wrk ... -s benches/wrk/login.lua URL -- EMAIL PASSWORD

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"email":"' .. args[1] .. '","password":"' .. args[2] .. '"}'
end
