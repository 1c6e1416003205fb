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
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

LUA = r"""
local mode = "%(mode)s"
local nroutes = %(nroutes)d
local reqs = {}
if mode == "post" then
  wrk.method = "POST"
  wrk.body = string.rep("x", %(body_size)d)
  wrk.headers["Content-Type"] = "application/octet-stream"
elseif mode == "close" then
  wrk.headers["Connection"] = "close"
end
init = function(args)
  if mode == "routes" then
    math.randomseed(12345)
    for i = 0, nroutes - 1 do
      reqs[i + 1] = wrk.format("GET", "/r/" .. i .. "/")
    end
  end
end
if mode == "routes" then
  request = function()
    return reqs[math.random(nroutes)]
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\":%%d,\"bytes\":%%d,\"duration_us\":%%d,\"connect_errors\":%%d," ..
    "\"read_errors\":%%d,\"write_errors\":%%d,\"status_errors\":%%d,\"timeouts\":%%d," ..
    "\"p50_us\":%%d,\"p99_us\":%%d}\n",
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(port: int, *, path: str = "/", mode: str = "get", conns: int = 10,
            duration: float = 5.0, body_size: int = 0, nroutes: int = 1, tmp: str = "/tmp",
            timeout_s: int = 10) -> dict:
    """Run wrk once against 127.0.0.1:port; return req/s, MB/s, p50/p99 (ms), errors."""
    script = os.path.join(tmp, f"wrk-{mode}-{nroutes}-{body_size}.lua")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(LUA % {"mode": mode, "nroutes": nroutes, "body_size": body_size})
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
