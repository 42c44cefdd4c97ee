-- Shared by every scenario: optional request body/headers from the environment, a JSON summary at the end.
--   WRK_METHOD, WRK_BODY, WRK_TOKEN, WRK_CHAT=1 (a fresh conversation id per request)
local method = os.getenv("WRK_METHOD") or "GET"
local body = os.getenv("WRK_BODY")
local token = os.getenv("WRK_TOKEN")
local chat = os.getenv("WRK_CHAT") == "1"

local function uuid4()
  local t = "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx"
  return (string.gsub(t, "[xy]", function(c)
    local v = (c == "x") and math.random(0, 15) or math.random(8, 11)
    return string.format("%x", v)
  end))
end

local threads = {}

function setup(thread)
  thread:set("id", math.random(1, 1000000))
  table.insert(threads, thread)
end

-- 503s are counted apart: a bounded queue refusing (login beyond BCRYPT_MAX_PENDING) is not an error.
refused = 0

function response(status, headers, body)
  if status == 503 then refused = refused + 1 end
end

function init(args)
  math.randomseed(os.time() + id)
  wrk.method = method
  wrk.headers["Content-Type"] = "application/json"
  if token then wrk.headers["Authorization"] = "Bearer " .. token end
  if body then wrk.body = body end
end

function request()
  if chat then
    local b = '{"conversation_id": "' .. uuid4() .. '", "message": "Bonjour WIBOT, un test de charge."}'
    return wrk.format(nil, nil, nil, b)
  end
  return wrk.format()
end

function done(summary, latency, requests)
  local errors = summary.errors
  local refused_total = 0
  for _, thread in ipairs(threads) do refused_total = refused_total + (thread:get("refused") or 0) end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "non_2xx": %d, "refused_503": %d, "socket_errors": %d, ' ..
    '"p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f, "mean_ms": %.3f}\n',
    summary.requests, summary.duration, errors.status, refused_total,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000, latency.mean / 1000))
end
