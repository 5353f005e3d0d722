-- wrk script of scripts/bench-proxy.sh: POST /v1/query/bench-view with body {},
-- content-type application/json, x-tenant-id bench and a bearer token taken in turn from
-- the file given after `--` (one token per line).
local requests = {}
local count, next_index = 0, 0

function init(args)
  local path = args[1]
  for line in io.lines(path) do
    if #line > 0 then
      count = count + 1
      requests[count] = wrk.format("POST", "/v1/query/bench-view", {
        ["Content-Type"] = "application/json",
        ["X-Tenant-Id"] = "bench",
        ["Authorization"] = "Bearer " .. line,
      }, "{}")
    end
  end
  if count == 0 then
    error("no tokens in " .. tostring(path))
  end
end

function request()
  next_index = next_index % count + 1
  return requests[next_index]
end
