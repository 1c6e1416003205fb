"""What is measured: every scenario, its metrics, their units, and the targets.

Owns the scenario catalogue and the code that measures one peer once. It does
not decide order, rounds or output (runner.py, report.py do).

Groups:
  http     wrk against a long-running peer (started once, shared by the scenarios, with
           1,000 users' routes): plain and browser-shaped request heads, and one
           scenario per response shape (benchmarks/shapes.py), interleaved round by round
  ws       benchmarks.wsload against the same long-running peer
  rss      a fresh peer: idle RSS, + 10,000 idle keep-alive connections, + 1,000 WebSockets
  routes   fresh cfproxy / CHP with N routes: API adds/s, GET /api/routes, RSS,
           throughput over random routes vs one route
  startup  a fresh peer, spawn -> first proxied 200
  pipeline a fresh peer per port: a client pipelining requests without reading, RSS growth
  state    the SQLite store: adds/s, restart with N routes, SQLite vs memory (benchmarks/state.py)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks import procs
from benchmarks.httpc import HTTPClient, open_idle_keepalive
from benchmarks.peers import REPO, TOKEN, Peer
from benchmarks.pipeline import REQUESTS, pipeline_without_reading
from benchmarks.shapes import SHAPES
from benchmarks.wrkload import run_wrk

MIB = 1 << 20


@dataclass(frozen=True)
class Target:
    """cfproxy's goal for a metric: value <op> factor x (the reference peer's value)."""

    ref: str | None  # "chp", "nginx", or None: compare with `factor` itself
    op: str  # ">=", "<=" or "<"
    factor: float
    text: str

    def check(self, value: float, refs: dict[str, float]) -> bool | None:
        base = refs.get(self.ref) if self.ref else 1.0
        if base is None or value is None:
            return None
        bound = self.factor * base
        if self.op == ">=":
            return value >= bound
        return value < bound if self.op == "<" else value <= bound


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool = True
    digits: int = 0
    targets: tuple[Target, ...] = ()
    in_table: bool = True


@dataclass
class Scenario:
    id: str
    title: str
    group: str
    metrics: list[Metric]
    params: dict = field(default_factory=dict)
    peers: tuple[str, ...] = ("cfproxy", "chp", "nginx", "direct")


def _t(ref: str | None, op: str, factor: float, text: str) -> Target:
    return Target(ref, op, factor, text)


T_GET = (_t("chp", ">=", 8, "≥ 8× CHP"), _t("nginx", ">=", 0.7, "≥ 0.7× nginx"))
# issue 10's targets (proxy pinned to one core, nginx as the HTTP backend)
T_GET_100 = (_t("chp", ">=", 9, "≥ 9× CHP"), _t("nginx", ">=", 0.85, "≥ 0.85× nginx"))
T_BROWSER = (_t("chp", ">=", 8, "≥ 8× CHP"), _t("nginx", ">=", 0.7, "≥ 0.7× nginx"))
T_SHAPE = (_t(None, ">=", 0.85, "≥ 0.85× best shape"),)
T_PIPELINE = (_t(None, "<", 20, "< 20 MiB"),)
T_P99 = (_t("chp", "<=", 0.2, "≤ 1/5 CHP"),)
T_BODY = (_t("nginx", ">=", 0.8, "≥ 0.8× nginx"),)
T_WS = (_t("nginx", ">=", 1.0, "≥ nginx"),)
# CPU time the proxy process tree used during the measurement, as % of one core. Below ~95%
# the proxy was not the bottleneck (or shared its core with other processes).
CPU = Metric("cpu_pct", "proxy CPU (of one core)", "%", higher_is_better=False)


def _per_core(key: str, unit: str) -> Metric:
    """Throughput per proxy CPU-second: efficiency, steadier than raw throughput on a busy host."""
    return Metric(key, "per proxy CPU-second", unit, True, 0)


PER_CORE_REQ = _per_core("req_per_cpu_s", "req/CPU-s")


def _get_metrics(targets: tuple[Target, ...] = T_GET, p99: tuple[Target, ...] = T_P99
                 ) -> list[Metric]:
    return [Metric("req_per_s", "requests/s", "req/s", True, 0, targets),
            Metric("p50_ms", "p50 latency", "ms", False, 2),
            Metric("p99_ms", "p99 latency", "ms", False, 2, p99), CPU, PER_CORE_REQ]


def _shape_scenario(name: str) -> Scenario:
    """Small GETs, 100 conns, plain request heads, answered with response shape `name`."""
    return Scenario(
        f"shape-{name}", f"response shape {name}: {SHAPES[name][0]}", "http",
        [Metric("req_per_s", "requests/s", "req/s", True, 0),
         Metric("p99_ms", "p99 latency", "ms", False, 2), CPU, PER_CORE_REQ,
         # the peer's figure here ÷ its best shape's (medians; computed after all rounds).
         # Per CPU-second holds when the host is busy and the proxy is not saturated.
         Metric("vs_best", "÷ best shape (requests/s)", "×", True, 2, T_SHAPE),
         Metric("vs_best_cpu", "÷ best shape (per proxy CPU-second)", "×", True, 2)],
        {"mode": "get", "path": f"/shape/{name}", "conns": 100, "backend": "shape",
         "interleave": "shapes"},
        ("cfproxy", "nginx", "direct"))  # CHP left out: the shapes are cfproxy's target


def _pipeline_metrics() -> list[Metric]:
    out = []
    for kind, label in (("public", "public port (/_chp_healthz)"),
                        ("api", "API port (GET /api/routes, no token)"),
                        ("metrics", "metrics port (GET /metrics)")):
        out += [Metric(f"{kind}_mib", f"RSS growth, {label}", "MiB", False, 1, T_PIPELINE),
                Metric(f"{kind}_sent_mb", f"requests written, {label}", "MB", True, 0)]
    return out


SCENARIOS: list[Scenario] = [
    Scenario("small-get-10", "small GET, keep-alive, 10 conns", "http", _get_metrics(),
             {"mode": "get", "path": "/", "conns": 10}),
    Scenario("small-get-100", "small GET, keep-alive, 100 conns, plain heads", "http",
             _get_metrics(T_GET_100), {"mode": "get", "path": "/", "conns": 100}),
    Scenario("browser-100", "small GET, keep-alive, 100 conns, browser-shaped heads (cookie, "
             "1,000 users' paths)", "http", _get_metrics(T_BROWSER, ()),
             {"mode": "browser", "path": "/", "conns": 100}),
    *(_shape_scenario(name) for name in SHAPES),
    Scenario("new-conn", "new connection per request, 10 conns", "http",
             [Metric("req_per_s", "requests/s", "req/s", True, 0,
                     (_t("chp", ">=", 4, "≥ 4× CHP"),)),
              Metric("p99_ms", "p99 latency", "ms", False, 2), CPU, PER_CORE_REQ],
             {"mode": "close", "path": "/", "conns": 10}),
    Scenario("resp-1m", "1 MiB responses, 10 conns", "http",
             [Metric("mb_per_s", "throughput", "MB/s", True, 0, T_BODY), CPU],
             {"mode": "get", "path": "/1m", "conns": 10}),
    Scenario("resp-64m", "64 MiB responses, 4 conns", "http",
             [Metric("mb_per_s", "throughput", "MB/s", True, 0, T_BODY), CPU],
             {"mode": "get", "path": "/64m", "conns": 4, "min_duration": 2}),
    # the python backend reads the whole body before it answers, as an application does
    # (nginx's `return 200` answers at once and resets the rest of the upload)
    Scenario("upload-1m", "1 MiB uploads (POST), 10 conns", "http",
             [Metric("mb_per_s", "throughput", "MB/s", True, 0, T_BODY), CPU],
             {"mode": "post", "path": "/shape/plain", "conns": 10, "body_size": MIB,
              "backend": "shape"}),
    Scenario("ws-echo-1", "WebSocket echo, 1 conn, 32 B", "ws",
             [Metric("ops_per_s", "round trips/s", "echo/s", True, 0),
              Metric("p99_ms", "p99 latency", "ms", False, 3), CPU],
             {"mode": "echo", "conns": 1}),
    Scenario("ws-echo-50", "WebSocket echo, 50 conns, 32 B", "ws",
             [Metric("ops_per_s", "round trips/s", "echo/s", True, 0),
              Metric("p50_ms", "p50 latency", "ms", False, 2),
              Metric("p99_ms", "p99 latency", "ms", False, 2), CPU,
              Metric("ops_per_cpu_s", "per proxy CPU-second", "echo/CPU-s", True, 0, T_WS)],
             {"mode": "echo", "conns": 50}),
    Scenario("ws-bulk", "WebSocket bulk echo, 1 conn, 64 KiB frames", "ws",
             [Metric("mb_per_s", "throughput", "MB/s", True, 0, T_WS), CPU],
             {"mode": "bulk", "conns": 1}),
    Scenario("rss", "memory (RSS, process tree)", "rss",
             [Metric("idle_mib", "idle RSS", "MiB", False, 1,
                     (_t("chp", "<=", 0.5, "≤ 1/2 CHP"),)),
              Metric("idle_conns_mib", "RSS, idle keep-alive conns open", "MiB", False, 1),
              Metric("kib_per_conn", "per idle keep-alive conn", "KiB", False, 1,
                     (_t("chp", "<=", 0.5, "≤ 1/2 CHP"),)),
              Metric("ws_open_mib", "RSS, WebSockets open", "MiB", False, 1),
              Metric("kib_per_ws", "per open WebSocket", "KiB", False, 1)],
             {}, ("cfproxy", "chp", "nginx")),
    Scenario("routes", "many routes", "routes",
             [Metric("adds_per_s", "API route adds/s (sequential, keep-alive)", "adds/s", True, 0,
                     (_t("chp", ">=", 1, "≥ CHP"),)),
              Metric("get_routes_ms", "GET /api/routes", "ms", False, 0,
                     (_t("chp", "<=", 1 / 3, "≤ 1/3 CHP"),)),
              Metric("rss_mib", "RSS with all routes", "MiB", False, 1),
              Metric("random_req_per_s", "requests/s, random routes", "req/s", True, 0),
              Metric("one_req_per_s", "requests/s, one route", "req/s", True, 0),
              Metric("random_vs_one", "random ÷ one route", "×", True, 2,
                     (_t(None, ">=", 0.9, "≥ 0.9"),))],
             {}, ("cfproxy", "chp")),
    Scenario("startup", "start-up", "startup",
             [Metric("startup_ms", "spawn → first proxied 200", "ms", False, 0,
                     (_t("chp", "<=", 0.5, "≤ 1/2 CHP"),))],
             {}, ("cfproxy", "chp", "nginx")),
    Scenario("pipeline", "a client pipelining requests without reading (fresh process per port)",
             "pipeline", _pipeline_metrics(), {"max_mb": 100}, ("cfproxy", "chp")),
]
from benchmarks import state as _state  # noqa: E402 - the state group (SQLite store)

SCENARIOS.append(_state.scenario())
BY_ID = {s.id: s for s in SCENARIOS}
GROUPS = ("http", "ws", "rss", "routes", "startup", "pipeline", "state")
SHAPE_IDS = [f"shape-{name}" for name in SHAPES]

# Issue 10's targets, in its order: (what, [(scenario, metric), ...]); the report prints
# them as one table with what this run measured.
ISSUE10_TARGETS: list[tuple[str, list[tuple[str, str]]]] = [
    ("small GET keep-alive, 100 conns, plain heads", [("small-get-100", "req_per_s")]),
    ("small GET keep-alive, 100 conns, browser-shaped heads", [("browser-100", "req_per_s")]),
    ("each response shape (Content-Length / chunked, ± Connection: keep-alive, Set-Cookie)",
     [(sid, "vs_best") for sid in SHAPE_IDS]),
    ("new connection per request", [("new-conn", "req_per_s")]),
    ("WebSocket echo, 50 conns, echoes per proxy CPU-second", [("ws-echo-50", "ops_per_cpu_s")]),
    ("a client pipelining 100 MB of requests without reading (public, API, metrics ports)",
     [("pipeline", f"{k}_mib") for k in ("public", "api", "metrics")]),
]


# --- measuring one peer once --------------------------------------------------------------

def _with_cpu(peer: Peer, fn: Callable[[], dict]) -> dict:
    c0 = peer.cpu_seconds() if peer.proc else None
    t0 = time.monotonic()
    res = fn()
    if c0 is not None:
        used = peer.cpu_seconds() - c0
        res["cpu_pct"] = 100 * used / (time.monotonic() - t0)
        if used > 0:  # rate ÷ average core share over the window (warm-up runs at load too)
            share = res["cpu_pct"] / 100
            if "req_per_s" in res:
                res["req_per_cpu_s"] = res["req_per_s"] / share
            if "ops_per_s" in res:
                res["ops_per_cpu_s"] = res["ops_per_s"] / share
    return res


def measure_http(sc: Scenario, peer: Peer, duration: float, tmp: str) -> dict:
    p = sc.params
    dur = max(duration, p.get("min_duration", 0))
    port = peer.port_for(p.get("backend", "http"))

    def go() -> dict:
        r = run_wrk(port, path=p["path"], mode=p["mode"], conns=p["conns"], duration=dur,
                    body_size=p.get("body_size", 0), tmp=tmp)
        if r["requests"] == 0 or r["errors"] > max(10, r["requests"] // 100):
            raise RuntimeError(f"{r['errors']} errors in {r['requests']} requests {r['error_detail']}")
        if p["mode"] == "post":
            r["mb_per_s"] = r["up_mb_per_s"]
        return r

    return _with_cpu(peer, go)


def measure_ws(sc: Scenario, peer: Peer, duration: float) -> dict:
    p = sc.params

    def go() -> dict:
        cmd = [sys.executable, "-m", "benchmarks.wsload", "--port", str(peer.ws_port),
               "--path", peer.ws_path, "--mode", p["mode"], "--conns", str(p["conns"]),
               "--duration", str(duration)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO),
                             timeout=duration + 60)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(f"wsload failed: {out.stderr[-300:]}")
        r = json.loads(lines[-1])
        if "error" in r:
            raise RuntimeError(r["error"])
        if r["ops"] == 0 or r["errors"]:
            raise RuntimeError(f"{r['errors']} connection errors, {r['ops']} echoes")
        return r

    return _with_cpu(peer, go)


def _run_async(coro):
    try:
        import uvloop
        return uvloop.run(coro) if hasattr(uvloop, "run") else asyncio.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def first_proxied_ok(port: int) -> bool:
    try:
        with HTTPClient(port, timeout=2) as c:
            return c.request("GET", "/")[0] == 200
    except OSError:
        return False


def _settle_rss(peer: Peer, secs: float = 0.5) -> int:
    time.sleep(secs)
    return peer.rss_kib()


def _idle_base(peer: Peer) -> int:
    for _ in range(20):  # a few requests so lazily built state exists before "idle"
        first_proxied_ok(peer.port)
    return _settle_rss(peer)


def measure_rss_idle_conns(peer: Peer, idle_conns: int) -> dict:
    """Fresh peer: idle RSS, then RSS with `idle_conns` idle keep-alive connections open."""
    base = _idle_base(peer)

    async def hold_idle() -> tuple[int, int]:
        conns = await open_idle_keepalive(peer.port, idle_conns)
        await asyncio.sleep(1.0)
        rss = peer.rss_kib()
        still = sum(1 for c in conns if not c.closed)
        for c in conns:
            c.transport.abort()
        return rss, still

    rss, still = _run_async(hold_idle())
    if still < idle_conns * 0.99:
        raise RuntimeError(f"only {still}/{idle_conns} idle connections stayed open")
    return {"idle_mib": base / 1024, "idle_conns_mib": rss / 1024,
            "kib_per_conn": (rss - base) / idle_conns}


def measure_rss_websockets(peer: Peer, websockets: int) -> dict:
    """Fresh peer: RSS with `websockets` open (upgraded, idle) WebSockets, and per WebSocket."""
    base = _idle_base(peer)

    async def hold_ws() -> int:
        from benchmarks.wsload import open_websockets
        socks = await open_websockets(peer.ws_port, websockets, path=peer.ws_path)
        await asyncio.sleep(1.0)
        rss = peer.rss_kib()
        for s in socks:
            s.transport.abort()
        return rss

    rss = _run_async(hold_ws())
    return {"ws_open_mib": rss / 1024, "kib_per_ws": (rss - base) / websockets}


ROUTE_ADD_TIME_LIMIT = 300.0  # seconds; a peer slower than n / this is an error cell


def add_routes(peer: Peer, n: int, limit: float = ROUTE_ADD_TIME_LIMIT) -> float:
    """POST n routes /r/<i> sequentially over one keep-alive connection; return adds/s."""
    body = b'{"target": "%s"}' % peer.backends.http_url.encode()
    with HTTPClient(peer.api_port, token=TOKEN) as c:
        reqs = [c.build("POST", f"/api/routes/r/{i}", body) for i in range(n)]
        t0 = time.perf_counter()
        for i, raw in enumerate(reqs):
            status, resp = c.send_raw(raw)
            if status != 201:
                raise RuntimeError(f"route add -> {status} {resp[:100]!r}")
            if not i % 1000 and time.perf_counter() - t0 > limit:
                raise RuntimeError(f"only {i:,} of {n:,} routes added in {limit:.0f} s")
        return n / (time.perf_counter() - t0)


def get_routes_ms(peer: Peer, expect: int) -> float:
    with HTTPClient(peer.api_port, token=TOKEN) as c:
        t0 = time.perf_counter()
        status, body = c.request("GET", "/api/routes")
        ms = (time.perf_counter() - t0) * 1000
    if status != 200:
        raise RuntimeError(f"GET /api/routes -> {status}")
    got = len(json.loads(body))
    if got < expect:
        raise RuntimeError(f"GET /api/routes returned {got} routes, expected ≥ {expect}")
    return ms


def measure_routes_table(peer: Peer, n: int, gets: int = 3) -> dict:
    adds = add_routes(peer, n)
    ms = statistics.median(get_routes_ms(peer, n) for _ in range(gets))
    return {"adds_per_s": adds, "get_routes_ms": ms, "rss_mib": _settle_rss(peer, 1.0) / 1024}


def measure_route_throughput(peer: Peer, nroutes: int, duration: float, tmp: str) -> float:
    r = run_wrk(peer.port, mode="routes", nroutes=nroutes, conns=10, duration=duration, tmp=tmp)
    if r["requests"] == 0 or r["errors"] > max(10, r["requests"] // 100):
        raise RuntimeError(f"{r['errors']} errors in {r['requests']} requests {r['error_detail']}")
    return r["req_per_s"]


def measure_startup(peer: Peer, timeout: float = 20.0) -> float:
    """ms from spawn to the first 200 through the proxy (polling every ~2 ms)."""
    t0 = time.perf_counter()
    proc = peer.spawn()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode}: {peer.log_tail(300)}")
            if first_proxied_ok(peer.port):
                return (time.perf_counter() - t0) * 1000
            time.sleep(0.002)
        raise RuntimeError(f"no proxied 200 within {timeout:.0f}s")
    finally:
        peer.stop()


def wait_ready(peer: Peer) -> None:
    procs.wait_port(peer.port, proc=peer.proc)


def measure_pipeline(peer: Peer, kind: str, max_mb: float, seconds: float) -> dict:
    """Fresh peer (metrics port open): pipeline requests to one port without reading."""
    port = {"public": peer.port, "api": peer.api_port, "metrics": peer.metrics_port}[kind]
    r = pipeline_without_reading(port, REQUESTS[kind], peer.rss_kib,
                                 max_bytes=int(max_mb * 1_000_000), seconds=seconds)
    if not peer.alive():
        raise RuntimeError(f"{peer.name} died during the {kind}-port pipeline: {peer.log_tail(300)}")
    return {f"{kind}_mib": r["growth_mib"], f"{kind}_sent_mb": r["sent_mb"]}
