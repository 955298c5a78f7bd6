-- Replays pre-signed requests from a file, each thread its own slice, so no
-- request id is sent twice. Optional fixed rate: WRK_DELAY_MS per connection.
-- The file has one request per line: METHOD \t PATH \t header:value|header:value \t BODY
local threads = {}
local thread_count = tonumber(os.getenv("WRK_THREADS") or "1")
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local requests = {}
local index = 0
local wrapped = 0
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")

function init(args)
  local path = os.getenv("WRK_REQUESTS")
  local line_number = 0
  for line in io.lines(path) do
    if line_number % thread_count == id then
      local method, req_path, header_text, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      local headers = {}
      for pair in header_text:gmatch("[^|]+") do
        local name, value = pair:match("^([^:]+):(.*)$")
        headers[name] = value
      end
      table.insert(requests, wrk.format(method, req_path, headers, body))
    end
    line_number = line_number + 1
  end
end

function request()
  index = index + 1
  if index > #requests then
    index = 1
    wrapped = wrapped + 1
  end
  return requests[index]
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function done(summary, latency, requests_)
  local wraps = 0
  for _, thread in ipairs(threads) do
    wraps = wraps + (thread:get("wrapped") or 0)
  end
  local errors = summary.errors
  io.write(string.format(
    "WRK_JSON {\"requests\":%d,\"duration_us\":%d,\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d," ..
    "\"p50_us\":%d,\"p95_us\":%d,\"p99_us\":%d,\"max_us\":%d,\"wrapped\":%d}\n",
    summary.requests, summary.duration, errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, wraps))
end
