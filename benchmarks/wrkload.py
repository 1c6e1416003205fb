"""HTTP load with wrk: one generated Lua script, results as a dict.

Owns HTTP load generation. wrk runs with one thread on the load core. A small
Lua script (written to the run's temp dir) sets the request up and, in its
done() hook, prints one machine-readable line with requests, bytes, duration,
errors and the p50/p99 latency, so nothing depends on wrk's human output.

Request modes:
  get     GET <path> (wrk's pre-built request, cheapest)
  close   GET <path> with `Connection: close`: a new connection per request
  post    POST <path> with a body of `body_size` bytes
  routes  GET /r/<i>/ with i drawn at random from 0..nroutes-1 (requests pre-formatted
          in init(), picked in request()); `routes` with nroutes=1 is the same
          machinery aimed at one route, the fair comparison for "random vs one".
  browser GET /user/<name>/<JupyterLab path> with a browser's head (cookie, user agent,
          accept headers; benchmarks/shapes.py), pre-built in init() for 1,000 users ×
          4 paths each and picked at random per request.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

from benchmarks import shapes

BROWSER_HEADS_PER_USER = 4  # 4,000 distinct heads: no memo of recent heads can hold them all
# Settings come first as generated Lua (`_prelude`); the body below is the same for every mode.
LUA_BODY = r"""
local reqs = {}
local nreqs = 0
if mode == "post" then
  wrk.method = "POST"
  wrk.body = string.rep("x", body_size)
  wrk.headers["Content-Type"] = "application/octet-stream"
elseif mode == "close" then
  wrk.headers["Connection"] = "close"
end
local function hex(n)
  local t = {}
  for i = 1, n do t[i] = string.format("%x", math.random(0, 15)) end
  return table.concat(t)
end
init = function(args)
  math.randomseed(12345)
  if mode == "routes" then
    for i = 0, nroutes - 1 do
      reqs[i + 1] = wrk.format("GET", "/r/" .. i .. "/")
    end
    nreqs = nroutes
  elseif mode == "browser" then
    -- browser heads through JupyterHub: users' paths, their cookies, pre-built once
    local host = wrk.headers["Host"]
    for u = 0, nusers - 1 do
      local user = string.format("u%04d", u)
      -- JupyterLab sends the _xsrf cookie's value as X-XSRFToken: one token per browser
      local xsrf = "2|" .. hex(8) .. "|" .. hex(32) .. "|1765083210"
      local cookie = "jupyterhub-user-" .. user .. "=2|1:0|10:1765083210|21:jupyterhub-user-" ..
        user .. "|44:" .. hex(44) .. "|" .. hex(64) .. "; _xsrf=" .. xsrf ..
        "; jupyterhub-session-id=" .. hex(32)
      for j = 1, per_user do
        local p = paths[math.random(#paths)]
        p = p:gsub("{ts}", tostring(1765083210000 + math.random(0, 999999)))
        p = p:gsub("{n}", tostring(math.random(0, 99)))
        nreqs = nreqs + 1
        reqs[nreqs] = "GET /user/" .. user .. p .. " HTTP/1.1\r\nHost: " .. host ..
          "\r\nConnection: keep-alive\r\nUser-Agent: " .. user_agent ..
          "\r\nAccept: " .. accept .. "\r\nX-XSRFToken: " .. xsrf ..
          "\r\nReferer: http://" .. host .. "/user/" .. user .. "/lab" ..
          "\r\nAccept-Encoding: " .. accept_encoding .. "\r\nAccept-Language: " ..
          accept_language .. "\r\nCookie: " .. cookie .. "\r\n\r\n"
      end
    end
  end
end
if mode == "routes" or mode == "browser" then
  request = function()
    return reqs[math.random(nreqs)]
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\":%d,\"bytes\":%d,\"duration_us\":%d,\"connect_errors\":%d," ..
    "\"read_errors\":%d,\"write_errors\":%d,\"status_errors\":%d,\"timeouts\":%d," ..
    "\"p50_us\":%d,\"p99_us\":%d}\n",
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def _lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _prelude(mode: str, nroutes: int, body_size: int) -> str:
    paths = ", ".join(_lua_str(p) for p in shapes.BROWSER_PATHS)
    return "\n".join([
        f"local mode = {_lua_str(mode)}", f"local nroutes = {nroutes}",
        f"local body_size = {body_size}", f"local nusers = {shapes.USERS}",
        f"local per_user = {BROWSER_HEADS_PER_USER}", f"local paths = {{{paths}}}",
        f"local user_agent = {_lua_str(shapes.USER_AGENT)}",
        f"local accept = {_lua_str(shapes.ACCEPT)}",
        f"local accept_encoding = {_lua_str(shapes.ACCEPT_ENCODING)}",
        f"local accept_language = {_lua_str(shapes.ACCEPT_LANGUAGE)}", ""])


def lua_script(mode: str, nroutes: int = 1, body_size: int = 0) -> str:
    """The wrk script for one request mode."""
    return _prelude(mode, nroutes, body_size) + LUA_BODY


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(port: int, *, path: str = "/", mode: str = "get", conns: int = 10,
            duration: float = 5.0, body_size: int = 0, nroutes: int = 1, tmp: str = "/tmp",
            timeout_s: int = 10) -> dict:
    """Run wrk once against 127.0.0.1:port; return req/s, MB/s, p50/p99 (ms), errors."""
    script = os.path.join(tmp, f"wrk-{mode}-{nroutes}-{body_size}.lua")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(lua_script(mode, nroutes, body_size))
    dur = max(1, round(duration))
    cmd = [wrk_path() or "wrk", "-t1", f"-c{conns}", f"-d{dur}s", f"--timeout={timeout_s}s",
           "-s", script, f"http://127.0.0.1:{port}{path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=dur + timeout_s + 30)
    m = re.search(r"^BENCHJSON (\{.*\})$", proc.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-300:]}")
    r = json.loads(m.group(1))
    secs = r["duration_us"] / 1e6 or 1.0
    errors = (r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["status_errors"]
              + r["timeouts"])
    up = r["requests"] * body_size if mode == "post" else 0
    return {"requests": r["requests"], "seconds": secs, "req_per_s": r["requests"] / secs,
            "mb_per_s": (r["bytes"] + up) / secs / 1e6,
            "down_mb_per_s": r["bytes"] / secs / 1e6, "up_mb_per_s": up / secs / 1e6,
            "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
            "errors": errors, "error_detail": {k: r[k] for k in (
                "connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")}}
