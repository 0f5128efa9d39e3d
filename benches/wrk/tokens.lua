-- wrk script for the "all-distinct tokens" HTTP runs (used by scripts/bench).
--
-- Every request carries `Authorization: Bearer <token>` with the next token of a file of
-- tokens (one per line, as written by the `mint` tool). The file is cut into one
-- contiguous share per wrk thread, so each thread starts at a different offset and the
-- threads never send the same token; a thread that exhausts its share starts over at its
-- beginning.
--
-- Timing care: wrk starts thread 0 before it runs the next thread's `init`, and counts
-- requests completed before its clock starts. So `init` only records the arguments, and
-- each thread reads its share (one seek + one read, no per-line work) on its first real
-- `request()`, all threads at once. The one `request()` wrk calls on thread 0 before
-- starting it, only to inspect the request's shape, gets a placeholder that is never sent.
--
-- With a third argument `refresh`, each token is sent instead as a refresh token: `POST`
-- with the JSON body `{"refresh_token":"<token>"}` (the control plane's refresh route).
--
-- With `dpop TOKEN HOST`, each line is a DPoP proof instead: the request carries
-- `Authorization: DPoP TOKEN`, `DPoP: <proof>` and `Host: HOST` (the host the proofs'
-- `htu` names).
--
-- Usage: wrk -t T ... -s benches/wrk/tokens.lua URL -- TOKEN_FILE T [refresh | dpop TOKEN HOST]

local path, nthreads, mode, dpop_token, dpop_host
local data, first, stop, pos
local inspected = false
local threads_created = 0

function setup(thread)
  thread:set("thread_index", threads_created)
  threads_created = threads_created + 1
end

function init(args)
  path = args[1]
  nthreads = tonumber(args[2] or "")
  mode = args[3] or "bearer"
  dpop_token = args[4]
  dpop_host = args[5]
  if path == nil or nthreads == nil then
    error("usage: wrk ... -s tokens.lua URL -- TOKEN_FILE THREADS")
  end
end

-- Reads this thread's share: the lines that start in [size*i/T, size*(i+1)/T).
local function load()
  local f = assert(io.open(path, "rb"))
  local size = f:seek("end")
  local from = math.floor(size * thread_index / nthreads)
  local to = math.floor(size * (thread_index + 1) / nthreads)
  -- One byte before the share (to see whether it starts on a line) and up to 8 KiB past
  -- it (to finish its last line; tokens are at most 8 KiB).
  local base = math.max(from - 1, 0)
  f:seek("set", base)
  data = f:read(math.min(size, to + 8192) - base)
  f:close()
  if from == 0 then
    first = 1
  else
    first = data:find("\n", 1, true) + 1
  end
  if to >= size then
    stop = #data
  else
    stop = data:find("\n", to - base, true)
  end
  if stop == nil or first > stop then
    error("no tokens for thread " .. thread_index .. " in " .. path)
  end
  pos = first
end

function request()
  if thread_index == 0 and not inspected then
    inspected = true
    return wrk.format(nil, nil, { ["Authorization"] = "Bearer placeholder" })
  end
  if data == nil then
    load()
  end
  local eol = data:find("\n", pos, true)
  local token = data:sub(pos, eol - 1)
  pos = eol + 1
  if pos > stop then
    pos = first
  end
  if mode == "dpop" then
    return wrk.format(nil, nil, {
      ["Authorization"] = "DPoP " .. dpop_token,
      ["DPoP"] = token,
      ["Host"] = dpop_host,
    })
  end
  if mode == "refresh" then
    return wrk.format("POST", nil, { ["Content-Type"] = "application/json" },
      '{"refresh_token":"' .. token .. '"}')
  end
  return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. token })
end
