-- wrk script: the request body comes from a file, and the summary is printed as one JSON line.
-- wrk counts a response with status > 399 in errors.status; the runner fails a window on any of
-- those or on any socket error. (A response() hook could check for exactly 2xx, but it makes wrk
-- parse every response in Lua, which would slow the load generator more than the fastest server.)
local body_path = os.getenv("WRK_BODY")
if body_path and body_path ~= "" then
  local f = assert(io.open(body_path, "rb"))
  wrk.body = f:read("*all")
  f:close()
end
wrk.method = os.getenv("WRK_METHOD") or "GET"
local content_type = os.getenv("WRK_CONTENT_TYPE")
if content_type and content_type ~= "" then
  wrk.headers["Content-Type"] = content_type
end
-- Further headers, one "Name: value" a line (the open inference protocol's binary header length).
for name, value in string.gmatch(os.getenv("WRK_HEADERS") or "", "([^:\n]+): ([^\n]*)\n") do
  wrk.headers[name] = value
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeout_errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
