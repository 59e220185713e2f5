-- wrk script: the request body comes from a file, and the summary is printed as one JSON line.
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

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"socket_errors":%d,"non_2xx":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
